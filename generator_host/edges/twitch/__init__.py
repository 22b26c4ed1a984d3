"""Twitch's account side: logging in (device code flow), keeping the login alive."""
