"""Fixtures for the twitch tests."""
