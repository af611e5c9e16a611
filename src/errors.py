"""The one error tree of the relay: library exceptions are translated into these."""


class IsdrError(Exception):
    """Root of every error the relay raises on purpose."""


class ConfigError(IsdrError):
    """The configuration is invalid; the message names the variable."""


class DatabaseUnavailable(IsdrError):
    """The database cannot take a write now: locked by another writer, full, or unreachable.

    A passing condition, unlike a bug: the write can be tried again later.
    """


class InstanceRejected(IsdrError):
    """A received instance cannot be stored; carries the DICOM status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


STATUS_OUT_OF_RESOURCES = 0xA700  # the sender may send it again later (PS3.4 B.2.3)


class OutOfSpace(InstanceRejected):
    """Storing would eat into the configured free-disk reserve."""

    def __init__(self, reason: str) -> None:
        super().__init__(STATUS_OUT_OF_RESOURCES, reason)
