"""The choices file of the review page ("Export choices"): exactly which photos ``samespace act --choices`` acts on.

``{"format": "samespace-choices", "version": 1, "groups": SHA256, "act_on": [paths]}``; ``groups`` is
:func:`groups_digest` of the result the page was written with, so a file only applies to that result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from samespace import outputs
from samespace.actions import ActError, Document, is_under, parse_json, path_strings, read_capped

MAX_CHOICES_BYTES = 64 * 2**20
CHOICES_FORMAT = "samespace-choices"


def groups_digest(groups: Sequence[Sequence[str]]) -> str:
    """The sha256 of a result's groups (their members, in order): ties a choices file to the result it was made on."""
    text = json.dumps([list(g) for g in groups], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def load_choices(path: str | Path, doc: Document) -> set[str]:
    """The photos a choices file (the review page's "Export choices") names to act on, validated against ``doc``.

    The file is untrusted input: size cap, types, the result it was made on (:func:`groups_digest`), and every
    path must be a photo of one of the result's groups, listed once, not a library photo; a group with every
    photo chosen is refused (a group always keeps one). ActError, one line naming the file and the value.
    """
    path = Path(path)
    data = parse_json(path, read_capped(path, MAX_CHOICES_BYTES, "choices file"), "choices file")
    if not isinstance(data, dict) or data.get("format") != CHOICES_FORMAT:
        raise ActError(f"{path}: not a SameSpace choices file (export one with the review page's Export choices)")
    if data.get("groups") != groups_digest(doc.groups):
        raise ActError(f"{path}: made on the review page of another result (its groups differ from those of "
                       f"{doc.path.name}); export the choices again from this result's page")
    act_on = path_strings(data.get("act_on"), "act_on", path)
    group_of = {member: k for k, members in enumerate(doc.groups) for member in members}
    chosen: set[str] = set()
    for member in act_on:
        name = outputs.printable_name(member)
        if member not in group_of:
            raise ActError(f"{path}: act_on: {name} is not a photo of the groups of {doc.path.name}")
        if member in chosen:
            raise ActError(f"{path}: act_on lists {name} twice")
        if any(is_under(member, lib) for lib in doc.library):
            raise ActError(f"{path}: act_on: {name} is a library photo (--against); those are never acted on")
        chosen.add(member)
    for k, members in enumerate(doc.groups):
        if set(members) <= chosen:
            raise ActError(f"{path}: every photo of group {k + 1} is chosen ({outputs.printable_name(members[0])} "
                           "...); a group keeps at least one: untick one on the page")
    return chosen
