"""A finished run as text: the one-line summary, the groups listing, the closing lines and the CSV of pairs."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from samespace import cli, outputs, tiers


def summary_line(summary: dict[str, Any]) -> str:
    """One line: images, blank, skipped, pairs scored, duplicate pairs (and how many are copies the score put
    under the threshold: tiers.copies_below_threshold), groups, seconds, the method and threshold (and the
    backbone's precision when reduced)."""
    copies = cli.counted(summary.get("copies_below_threshold", 0), "of them a copy", "of them copies")
    return (
        f"{cli.counted(summary['images'], 'image')}, "
        + (f"{summary['blank']:,} blank, " if summary.get("blank") else "")
        + f"{summary['skipped']:,} skipped, "
        f"{cli.counted(summary['pairs_scored'], 'pair')} scored "
        f"({summary['candidates']}), {cli.counted(summary['duplicate_pairs'], 'duplicate pair')}"
        + (f" ({copies} under the threshold)" if summary.get("copies_below_threshold") else "")
        + f" in {cli.counted(summary['groups'], 'group')}, "
        f"{summary['seconds']:.1f} s [{summary['method']}, threshold {summary['threshold']:g}"
        + (f", {summary['precision']}]" if summary.get("precision") else "]")
    )


def shown_score(score: float) -> str:
    """A score with 4 decimals, cut rather than rounded: a re-shoot scores at most 0.999999 (tiers.tiered_scores),
    so only a copy shows 1.0000.

    >>> shown_score(0.999999), shown_score(1.0), shown_score(0.35)
    ('0.9999', '1.0000', '0.3500')
    """
    return f"{math.floor(round(score * 1e4, 6)) / 1e4:.4f}"


def groups_text(document: dict[str, Any]) -> str:
    """The groups as plain text: one block per group, members then pair scores; then blank and skipped photos.

    A name with a new line, another control character or bytes that are not UTF-8 is quoted with backslash
    escapes (outputs.printable_name), so every line is one photo.
    """
    name = outputs.printable_name
    lines = []
    for g, group in enumerate(document["groups"], 1):
        lines.append(f"group {g} ({len(group['members'])} photos)")
        lines.extend(f"  {name(m)}" for m in group["members"])
        for a, b, s, tier in map(tiers.pair_parts, group["pairs"]):
            lines.append(f"    {shown_score(s)}  {tier:<10}  {name(a)}  ~  {name(b)}")
    for path in document.get("blank", []):
        lines.append(f"blank {name(path)}")
    for s in document["skipped"]:
        lines.append(f"skipped {name(s['path'])}: {outputs.printable_name(s['reason'], quote=False)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Closing lines: the files written and the photos skipped
# --------------------------------------------------------------------------------------------

# Skipped files listed one by one without --verbose; the rest are counted.
MAX_LISTED_SKIPPED = 5

# A skip reason (decoding.UnreadableImageError, finder) -> its short kind, the first that matches.
_SKIP_KINDS: tuple[tuple[str, str], ...] = (
    ("UnidentifiedImageError", "not an image"),
    ("cannot identify image", "not an image"),
    ("truncated", "truncated"),
    ("DecompressionBomb", "too many pixels"),
    ("file too large", "too large"),
    ("not a regular file", "not a regular file"),
    ("changed while it was being read", "changed while read"),
    ("cannot read file", "cannot read file"),
    ("PermissionError", "cannot read file"),
    ("FileNotFoundError", "cannot read file"),
)


def skip_kind(reason: str) -> str:
    """The short kind of a skip reason, for counting: ``not an image``, ``truncated``, ``too large`` ...;
    otherwise the reason up to its details (``cannot read image (SyntaxError: ...)`` -> ``cannot read image``)."""
    lowered = reason.lower()
    for needle, kind in _SKIP_KINDS:
        if needle.lower() in lowered:
            return kind
    head = reason.split(" (", 1)[0].split(": ", 1)[0].strip()
    return outputs.printable_name(head or "unknown reason", quote=False)


def skipped_count_line(skipped: Sequence[dict[str, str]]) -> str:
    """``skipped 3 files: 2 not an image, 1 truncated`` (kinds by count, then first seen); empty for none."""
    if not skipped:
        return ""
    kinds = Counter(skip_kind(s["reason"]) for s in skipped)  # keeps first-seen order among equal counts
    detail = ", ".join(f"{n:,} {kind}" for kind, n in sorted(kinds.items(), key=lambda item: -item[1]))
    return f"skipped {len(skipped):,} file{'s' if len(skipped) != 1 else ''}: {detail}"


def skipped_file_lines(skipped: Sequence[dict[str, str]], verbose: bool = False) -> list[str]:
    """``skipped: PATH: REASON`` per skipped file (names through outputs.printable_name, so each is one line):
    every one with ``verbose``, else the first MAX_LISTED_SKIPPED and how many more."""
    shown = skipped if verbose else skipped[:MAX_LISTED_SKIPPED]
    lines = [f"skipped: {outputs.printable_name(s['path'])}: {outputs.printable_name(s['reason'], quote=False)}"
             for s in shown]
    if len(skipped) > len(shown):
        lines.append(f"skipped: ... and {len(skipped) - len(shown):,} more (--verbose lists every one)")
    return lines


def closing_lines(written: Sequence[tuple[str, str]], store: tuple[str, int | None] | None,
                  skipped: Sequence[dict[str, str]], verbose: bool = False, list_skipped: bool = True) -> list[str]:
    """The lines before the summary line: ``wrote FILE (WHAT)`` per output file (``written``: name, what it
    is or ""), ``store: PATH (N photos)`` when a store was saved, then the skipped files counted by kind and
    listed (not when ``list_skipped`` is false: the groups listing already names each). Empty: nothing to say."""
    name = outputs.printable_name
    lines = [f"wrote {name(path)}" + (f" ({what})" if what else "") for path, what in written]
    if store is not None:
        path, photos = store
        lines.append(f"store: {name(path)}" + (f" ({photos:,} photo{'s' if photos != 1 else ''})"
                                                if photos is not None else ""))
    if skipped:
        lines.append(skipped_count_line(skipped))
        if list_skipped:
            lines.extend(skipped_file_lines(skipped, verbose))
    return lines


def hidden_line(count: int) -> str:
    """The line saying how many hidden files and folders the scan left out (photo_files.image_files)."""
    what = "hidden file or folder" if count == 1 else "hidden files and folders"
    return (f"left out {count:,} {what} (names starting with '.', @eaDir, __MACOSX: thumbnails and system files; "
            "--include-hidden scans them)")


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def csv_text(document: dict[str, Any]) -> str:
    """Every duplicate pair as CSV: group (1-based), path1, path2, score, tier.

    A path a spreadsheet would run as a formula (starting with ``= + - @`` or a tab) gets a leading ``'``
    (outputs.csv_cell); the JSON output keeps every name exactly.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "path1", "path2", "score", "tier"])
    for g, group in enumerate(document["groups"], 1):
        for a, b, s, tier in map(tiers.pair_parts, group["pairs"]):
            writer.writerow([g, outputs.csv_cell(a), outputs.csv_cell(b), f"{s:.6f}", tier])
    return buffer.getvalue()
