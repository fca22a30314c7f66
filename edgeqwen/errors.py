"""The one exception type users see: a single clear line naming the problem."""


class EdgeQwenError(Exception):
    """Bad input or an impossible request. The CLI prints `error: <message>` and exits 1."""
