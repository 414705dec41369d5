"""The one base class of every error a user can cause; `main.py` turns it into a single line and exit status 2."""


class KdjaxError(Exception):
    """A user-facing error: bad config, missing model or file, empty corpus, unreadable checkpoint, divergence."""
