"""The errors InferHub raises; each says what went wrong and what to do about it."""


class InferhubError(Exception):
    """Root of every error InferHub raises on purpose."""


class ConfigError(InferhubError):
    """Settings from the file, the environment or the command line are invalid."""


class SettingsNotSaved(InferhubError):
    """The settings file could not be written (a read-only folder, a full disk); nothing was changed."""


class BackendUnavailable(InferhubError):
    """The model server a request was sent to could not be reached."""


class ApiError(InferhubError):
    """A request fails with this HTTP status; the message is shown to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class MalformedRecord(InferhubError):
    """What another node sent about itself (its DNS-SD record, its status) is incomplete, oversized or
    inconsistent."""


class PortTaken(InferhubError, OSError):
    """A port the node must listen on is held by another program; the message says which port, what
    answers there, and the setting that chooses another."""


class Unauthorized(InferhubError):
    """A signature is missing, wrong, stale or replayed; the reason is for this node's log only."""
