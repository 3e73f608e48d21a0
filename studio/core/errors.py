"""User-facing error types. Every StudioError carries a one-line message a user can act on;
the CLI prints it and exits 2, the GUI shows it in a dialog."""

from __future__ import annotations


class StudioError(Exception):
    """Base class for errors caused by the user's input or environment (not bugs)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class ModelLoadError(StudioError):
    """The file could not be read as a model (missing, corrupt, needs trust, ...)."""


class UnsupportedModelError(StudioError):
    """The model loads but uses something the studio cannot handle."""


class DatasetError(StudioError):
    """The evaluation / calibration data does not fit the model."""


class RecipeError(StudioError):
    """A recipe is invalid. Names the layer and field when known."""

    def __init__(self, message: str, *, layer: str | None = None, field: str | None = None, hint=None):
        self.layer = layer
        self.field = field
        where = ""
        if layer:
            where += f"layer {layer!r}"
        if field:
            where += (", " if where else "") + f"field {field!r}"
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class PluginError(StudioError):
    """A technique plugin failed to load or refused its input."""


class TechniqueError(StudioError):
    """A technique cannot be applied to a layer (names the layer)."""


class ExportError(StudioError):
    """Export or verification failed."""


class WorkspaceError(StudioError):
    """A workspace file is corrupt, locked, from a newer version, or missing a variant file."""


class JobCancelled(Exception):
    """Raised inside a job at a progress point after cancel was requested."""


class JobCrashedError(StudioError):
    """A job running in a subprocess died (segfault, out of memory, os._exit)."""
