"""The one user-facing error type."""


class EllbenchError(ValueError):
    """A problem with the user's input or environment, reported as one line and exit code 2.

    A ValueError, so that library users (e.g. of `timm.create_model` on an ellbench model) catch the type they expect.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
