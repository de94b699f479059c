"""Peak resident memory of this process, the one measure of memory every benchmark prints."""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (``getrusage``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_rss_mb() -> float:
    """:func:`peak_rss_bytes` in MiB."""
    return peak_rss_bytes() / 2**20


def peak_rss_gb() -> float:
    """:func:`peak_rss_bytes` in GiB."""
    return peak_rss_bytes() / 2**30
