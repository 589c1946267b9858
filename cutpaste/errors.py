"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""


class CutPasteError(Exception):
    """Base class: the message names the file, key or flag at fault."""


class ConfigError(CutPasteError):
    """A config key, preset, flag or value is invalid."""


class DataError(CutPasteError):
    """The dataset layout or one of its files is unusable."""


class ModelBundleError(CutPasteError):
    """A model directory is missing, half written or from an incompatible version."""


class ExportError(CutPasteError):
    """A model cannot be written in the format asked for (a scorer the format cannot hold, a missing extra)."""
