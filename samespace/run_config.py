"""A local run's configuration read as a stranger's files: the experiment config, ``--hparam`` values, small
files read with a size cap.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from samespace import hparams as hparams_table


class UsageError(ValueError):
    """A command-line error of model_def.py: one line on stderr, exit status 2."""


# Caps on what a run reads from files it is given: real ones are a few KiB; anything far larger is not one.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # values in a config once YAML aliases are expanded (a "billion laughs" stops here)
MAX_METADATA_BYTES = 1 << 20


def local_hparams(config: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Hyperparameter values of an experiment config (constants), with KEY=VALUE overrides applied.

    A search range (e.g. from adaptive.yaml) has no single value and must be overridden. A config or override
    of the wrong shape is a ValueError of one line.
    """
    values = {**config_hparams(config), **override_values(overrides)}
    _refuse_ranges(values)
    return values


def override_values(overrides: Sequence[str]) -> dict[str, Any]:
    """The ``--hparam KEY=VALUE`` items as {KEY: typed VALUE} (a later item wins); a ValueError naming a bad item."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hparam {hparams_table.shown(item)}: expected KEY=VALUE")
        values[key.strip()] = yaml_value(value, item)
    return values


def _refuse_ranges(values: dict[str, Any]) -> None:
    ranges = sorted(k for k, v in values.items() if isinstance(v, dict))
    if ranges:
        raise ValueError(f"hyperparameters {ranges} are search ranges in the config; give each a value with --hparam")


def checked_local_hparams(config: dict[str, Any], path: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A local run's hyperparameters (``local_hparams``) checked against hparams.py, each problem blamed where it
    came from: a bad ``--hparam`` names the item as typed, anything else names the config file. UsageError."""
    try:
        from_config = config_hparams(config)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    try:
        given = override_values(overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    items = {item.partition("=")[0].strip(): item for item in overrides}  # the item that set each key (last wins)
    for key, value in given.items():
        try:
            hparams_table.check_values({key: value})
        except hparams_table.HparamError as exc:
            raise UsageError(f"--hparam {hparams_table.shown(items[key])}: {exc}") from exc
    values = {**from_config, **given}
    try:
        _refuse_ranges(values)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    return checked_hparams(values, str(path))


def config_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The config's ``hyperparameters`` mapping with each ``{type: const, val: V}`` replaced by V."""
    table = config.get("hyperparameters") or {}
    if not isinstance(table, dict):
        raise ValueError(f"'hyperparameters' must be a mapping of names to values, not a {type(table).__name__}")
    values: dict[str, Any] = {}
    for key, spec in table.items():
        if not isinstance(key, str):
            raise ValueError(f"hyperparameter name {hparams_table.shown(key)} is not a string")
        if isinstance(spec, dict) and spec.get("type") == "const":
            if "val" not in spec:
                raise ValueError(f"hyperparameter {key}: a const needs 'val'")
            values[key] = spec["val"]
        else:
            values[key] = spec  # a search range (a dict) is resolved by --hparam or rejected
    return values


def first_line(exc: BaseException) -> str:
    """An exception's message as one short line (YAML errors span several, with the text they quote)."""
    lines = str(exc).strip().splitlines()
    return hparams_table.shown(lines[0])[1:-1] if lines else type(exc).__name__


def yaml_value(text: str, item: str = "") -> Any:
    """VALUE typed as YAML (the safe loader: tags never build Python objects), except that 1e-3 is a float
    (YAML 1.1 wants 1.0e-3). Not YAML: a ValueError of one line quoting ``item``."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # ValueError: an int of over 4300 digits
        quoted = hparams_table.shown(item or text)
        raise ValueError(f"--hparam {quoted}: not a YAML value ({first_line(exc)})") from None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; OSError or ValueError (one line) otherwise.

    Opened without blocking and checked with fstat before reading: a FIFO or a device never hangs the run, and a
    huge file is never read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size} bytes, more than the {limit} a real one needs")
        return f.read(limit + 1)


def count_nodes(document: Any, limit: int) -> bool:
    """Whether ``document`` holds at most ``limit`` values, counting a value again each time an alias repeats it
    (iterative: a self-referencing YAML list ends at the limit too)."""
    stack, seen = [document], 0
    while stack:
        seen += 1
        if seen > limit:
            return False
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
    return True


def read_config(path: Path) -> dict[str, Any]:
    """The experiment config YAML (safe loader, size-capped), or a UsageError naming the file."""
    try:
        config = yaml.safe_load(read_small_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as exc:
        raise UsageError(f"--config {path}: cannot read ({type(exc).__name__}: {first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise UsageError(f"--config {path}: not an experiment config (a YAML mapping)")
    if not count_nodes(config, MAX_CONFIG_NODES):
        raise UsageError(f"--config {path}: more than {MAX_CONFIG_NODES} values once its YAML aliases are expanded")
    try:  # Determined writes the config into each checkpoint as JSON: dates, sets or odd keys would fail there
        json.dumps(config)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"--config {path}: holds values JSON cannot store ({first_line(exc)})") from None
    return config


def checked_hparams(values: dict[str, Any], source: str) -> dict[str, Any]:
    """The hyperparameters checked against hparams.py (type, range, known keys), as given (Determined keeps
    its own copy; the trial fills in the defaults)."""
    try:
        hparams_table.validate(values, source=source)
    except hparams_table.HparamError as exc:
        raise UsageError(str(exc)) from exc
    return values
