"""Exceptions users can cause. Each message says what went wrong and what to do."""


class AsrError(Exception):
    """Base of every error this project raises on purpose."""


class CacheCapacityError(AsrError):
    """The paged KV cache has no free page left for a request."""


class ContextLengthError(AsrError):
    """A prompt or document does not fit the model's (or engine's) context limit."""


class DocumentError(AsrError):
    """A document given for question answering is missing, binary, empty or too large."""


class AudioError(AsrError):
    """An audio file or buffer cannot be read as sound (missing, empty, corrupt or of an unknown format)."""


class ModelLoadError(AsrError):
    """Model weights are missing, incomplete or in a layout this project cannot read."""
