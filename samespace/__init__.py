"""SameSpace: find photos of the same space (re-shot, cropped, edited) in photo folders.

>>> import samespace
>>> found = samespace.find_duplicates(["photos/"])   # doctest: +SKIP
>>> found.groups, found.pairs, found.skipped          # doctest: +SKIP

The API (samespace.api) loads torch when first used, so ``import samespace`` and ``samespace --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Duplicates", "FindDuplicatesError", "__version__", "find_duplicates"]

if TYPE_CHECKING:
    from samespace.api import Duplicates, find_duplicates
    from samespace.errors import FindDuplicatesError


def __getattr__(name: str) -> Any:
    if name in ("find_duplicates", "Duplicates"):
        from samespace import api

        return getattr(api, name)
    if name == "FindDuplicatesError":  # what find_duplicates raises for a missing folder or no photos
        from samespace import errors

        return errors.FindDuplicatesError
    raise AttributeError(f"module 'samespace' has no attribute {name!r}")
