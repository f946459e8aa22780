"""Errors a user can cause. Each message names the file, key or value and says what to do."""


class MedsslError(Exception):
    """Base class for every error medssl raises on bad input or configuration."""


class SlideError(MedsslError):
    """A slide cannot be tiled: unreadable, missing, no MPP, no tissue, too small."""


class CacheError(MedsslError):
    """A cache cannot be opened or written as asked (schema or parameter mismatch, not a cache)."""


class InputError(MedsslError):
    """The list of inputs (files, folder, glob, CSV manifest) is malformed."""
