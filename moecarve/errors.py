"""Typed errors. The library raises these; only the CLI and the service translate them
(exit code, HTTP status, job error)."""


class MoecarveError(Exception):
    """Base class: every message says what was expected, what was found and how to fix it."""

    @property
    def type(self) -> str:
        return type(self).__name__


class RecipeError(MoecarveError, ValueError):
    """The recipe is malformed or infeasible for this model."""


class UnsupportedArchitectureError(RecipeError):
    """The model's ``model_type`` has no architecture entry."""


class UnsupportedExportError(RecipeError):
    """The model or carve cannot be held exactly by the requested native MoE class."""


class ModelSourceError(MoecarveError):
    """The model could not be found or loaded from the given source."""


class CalibrationError(MoecarveError):
    """Calibration or evaluation text is missing, unreadable or empty."""


class CheckpointError(MoecarveError):
    """A checkpoint directory is missing files or is inconsistent."""


class CancelledError(MoecarveError):
    """The run was cancelled by its caller (checked between layers)."""
