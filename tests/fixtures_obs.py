"""Fixtures for the obs tests."""
