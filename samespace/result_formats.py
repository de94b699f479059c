"""A finished run as text: the one-line summary, the groups listing and the CSV of pairs."""

from __future__ import annotations

import csv
import io
from typing import Any

from samespace import (
    outputs,
)


def summary_line(summary: dict[str, Any]) -> str:
    """One line: images, blank, skipped, pairs scored, groups, seconds (and the method and threshold)."""
    return (
        f"{summary['images']:,} images, "
        + (f"{summary['blank']:,} blank, " if summary.get("blank") else "")
        + f"{summary['skipped']:,} skipped, "
        f"{summary['pairs_scored']:,} pairs scored "
        f"({summary['candidates']}), {summary['duplicate_pairs']:,} duplicate pairs in {summary['groups']:,} groups, "
        f"{summary['seconds']:.1f} s [{summary['method']}, threshold {summary['threshold']:g}]"
    )


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
        lines.extend(f"    {s:.4f}  {name(a)}  ~  {name(b)}" for a, b, s in group["pairs"])
    for path in document.get("blank", []):
        lines.append(f"blank {name(path)}")
    for s in document["skipped"]:
        lines.append(f"skipped {name(s['path'])}: {outputs.printable_name(s['reason'], quote=False)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def csv_text(document: dict[str, Any]) -> str:
    """Every duplicate pair as CSV: group (1-based), path1, path2, score.

    A path a spreadsheet would run as a formula (starting with ``= + - @`` or a tab) gets a leading ``'``
    (outputs.csv_cell); the JSON output keeps every name exactly.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "path1", "path2", "score"])
    for g, group in enumerate(document["groups"], 1):
        for a, b, s in group["pairs"]:
            writer.writerow([g, outputs.csv_cell(a), outputs.csv_cell(b), f"{s:.6f}"])
    return buffer.getvalue()
