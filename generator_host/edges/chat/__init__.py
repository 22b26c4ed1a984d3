"""Chat adapters: Twitch IRC for streams, the terminal for the demo."""
