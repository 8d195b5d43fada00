"""The one user-facing error type."""


class EllbenchError(Exception):
    """A problem with the user's input or environment, reported as one line and exit code 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
