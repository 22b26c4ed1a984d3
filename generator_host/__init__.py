"""Chat Diffusion's generator host: Twitch chat in, Stable Diffusion images out to OBS."""

__version__ = "0.1.0"
