"""Exceptions users can cause. Each message says what went wrong and what to do."""


class AsrError(Exception):
    """Base of every error this project raises on purpose."""


class CacheCapacityError(AsrError):
    """The paged KV cache has no free page left for a request."""
