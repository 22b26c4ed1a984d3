"""The host's exit codes, shared by cli.py and app.py (neither imports the other for them)."""

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_LOGIN = 3  # Twitch refused the login
EXIT_ENGINE = 4  # the model could not be loaded, or the chat connection ended for good
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT (128 + 2)
