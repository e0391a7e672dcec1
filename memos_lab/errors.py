"""Errors that reach the user as one clear line and exit status 2, never a traceback wall."""


class MemosError(Exception):
    """Base class of every error caused by user input (config, data, stored files)."""


class ConfigError(MemosError):
    """An unknown config choice, a malformed override or an invalid setting."""


class MissingExtraError(ConfigError):
    """A component needs an optional extra that is not installed (`pip install -e ".[peers]"`)."""


class DataError(MemosError):
    """A dataset path that is missing or unreadable, or a file of the wrong shape."""


class NotFoundError(MemosError, KeyError):
    """An unknown memory id, user or cube."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class AccessDeniedError(MemosError, PermissionError):
    """The caller may not perform this operation on this cube."""


class IncompatibleError(MemosError):
    """A stored artefact (cube, KV cache, adapter) does not fit this schema or model."""


class BusyError(MemosError):
    """Another writer holds the cube or MOS root, or changed it since this process read it."""


class StorageError(MemosError):
    """The disk refused a write (full, over a size limit, an I/O error); what was stored before is unchanged."""
