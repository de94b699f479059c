"""The error a duplicate-finding run reports as one line (exit status 2)."""


class FindDuplicatesError(RuntimeError):
    """A run that cannot proceed (no images, bad option, unreadable checkpoint), with the reason."""
