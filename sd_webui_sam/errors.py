"""User-facing errors.

Every failure a user can cause (a bad file, a bad image, a bad prompt) is raised as a
:class:`SamUserError`. The panel shows ``str(error)`` as a status message and the HTTP API
answers it with ``error.http_status``; anything else that escapes is a bug.
"""


class SamUserError(Exception):
    """A problem the user can fix; the message says how."""

    http_status = 400


class ModelNotFoundError(SamUserError):
    http_status = 404


class UnrecognisedCheckpointError(SamUserError):
    """The file loaded, but its keys and shapes match no known model family."""

    http_status = 422


class UnsafeCheckpointError(SamUserError):
    """The pickle would run code (or load objects beyond tensors) to unpack."""

    http_status = 422


class CorruptCheckpointError(SamUserError):
    """Truncated, not a checkpoint at all, or tensors of the wrong shape."""

    http_status = 422


class InvalidImageError(SamUserError):
    pass


class ImageTooLargeError(InvalidImageError):
    http_status = 413


class InvalidPromptError(SamUserError):
    pass


class DownloadError(SamUserError):
    http_status = 502


class JobStopped(SamUserError):
    """A long job ended early because the user pressed Stop (or the host's Interrupt)."""

    http_status = 409


class OutOfMemoryError(SamUserError):
    http_status = 507
