"""The hyperparameters of the SameSpace trial: one declarative table, checked before any work.

Every hyperparameter the trial reads is one row of :data:`HPARAMS`: its type, its default (``REQUIRED`` when a
config must give it), and its allowed values (a range or a set of choices). :func:`validate` checks a whole set
(local ``--hparam`` overrides, a cluster trial's hparams, a checkpoint's load_data.json) and fills the defaults;
an unknown key is an error naming the known keys, so a typo never goes unnoticed. To add a hyperparameter, add a
row (its default must keep the published behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samespace import backbones, pair_sampling, views

REQUIRED = object()  # a config must give this hyperparameter (the published ones)
BACKBONES = backbones.BACKBONES
PAIRINGS = pair_sampling.PAIRINGS
MAX_BATCH_SIZE = 65536  # pairs per step; far above any memory a slot has for them
MAX_HEAD_RANK = 4096  # above the widest backbone's feature size (1280): a larger rank adds nothing
MAX_SHOWN = 60  # characters of a bad value quoted in a message: a megabyte value stays one short line


class HparamError(ValueError):
    """A hyperparameter that is unknown, missing, of the wrong type or out of range, naming it and its value."""


@dataclass(frozen=True)
class Hparam:
    """One hyperparameter: type (``float``, ``int``, ``bool`` or ``str``), default, and allowed values.

    ``low`` / ``high`` bound numbers (``low_open`` / ``high_open``: the bound itself is excluded);
    ``choices`` lists allowed strings; ``check`` is an extra test returning an error text or None.
    """

    kind: type
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    help: str = ""

    def allowed(self) -> str:
        """The allowed values in words, for error messages."""
        if self.choices is not None:
            return " | ".join(self.choices) + (" (or a file path)" if self.check is _weights_file else "")
        if self.low is None and self.high is None:
            return self.kind.__name__
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{self.kind.__name__} in {lo}{low}, {high}{hi}"


def _weights_file(value: str) -> str | None:
    """backbone_weights: imagenet, none, or a state-dict file that exists."""
    if value in ("imagenet", "none"):
        return None
    try:
        if Path(value).expanduser().is_file():
            return None
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, an unknown ~user
        pass
    return "expected imagenet, none or the path of an existing state-dict file"


HPARAMS: dict[str, Hparam] = {
    # Upper bounds keep a typo from training to NaN: an RMSprop learning rate above 1 only diverges, and alpha 1
    # never updates its running average of squared gradients (every step divides by eps).
    "global_batch_size": Hparam(int, low=1, high=MAX_BATCH_SIZE, help="pairs per optimizer step, over all slots"),
    "learning_rate": Hparam(float, low=0.0, high=1.0, low_open=True, help="RMSprop learning rate"),
    "alpha": Hparam(float, low=0.0, high=1.0, high_open=True, help="RMSprop smoothing constant"),
    "dropout1": Hparam(float, low=0.0, high=1.0, high_open=True, help="dropout after Linear(2560, 2048)"),
    "dropout2": Hparam(float, low=0.0, high=1.0, high_open=True, help="dropout after Linear(2048, 1024)"),
    "dropout3": Hparam(float, low=0.0, high=1.0, high_open=True, help="dropout after Linear(1024, 512)"),
    "backbone": Hparam(str, "mobilenet_v3_large", choices=BACKBONES, help="frozen feature extractor"),
    "backbone_weights": Hparam(str, "imagenet", choices=("imagenet", "none"), check=_weights_file,
                               help="imagenet, none (random) or the path of a state-dict file"),
    "pairing": Hparam(str, "faithful", choices=PAIRINGS, help="faithful: published pair counts; unique: i < j"),
    "feature_cache": Hparam(bool, True, help="run the frozen backbone once per (image, variant)"),
    "tie_twins": Hparam(bool, False, help="one twin head for both images"),
    "augment_negatives": Hparam(bool, False, help="flip / rotate training negatives too"),
    # The improved recipe (improved.yaml; docs/improved-recipe.md): defaults are the published behaviour.
    "head": Hparam(str, "concat", choices=("concat", "cosine"),
                   help="concat: the published MLP; cosine: siamese.CosineHead, which starts as the backbone cosine"),
    "pooling": Hparam(str, "avg", choices=("avg", "gem"), help="pooling of the backbone's last feature map"),
    "head_rank": Hparam(int, 64, low=1, high=MAX_HEAD_RANK,
                        help="cosine head: rank of its learned correction to the identity"),
    "views": Hparam(str, "published", choices=("published", "reshoot"),
                    help="published: flip / 5-degree variants; reshoot: views.py re-shoots, mining.py pairs"),
    "n_views": Hparam(int, 8, low=1, high=views.N_VIEWS,
                      help="views=reshoot: views per image (the plain one + n_views - 1 re-shoots)"),
    "negatives": Hparam(str, "whash", choices=("whash", "cosine"),
                        help="views=reshoot: whash (published sampler) | cosine (half hard look-alikes)"),
}
# The improved recipe's rows: the published configs leave them at their defaults and need not name them.
IMPROVED = ("head", "pooling", "head_rank", "views", "n_views", "negatives")


def optional_defaults() -> dict[str, Any]:
    """The published hyperparameters a config may leave out, with their defaults (the published configs name
    every one of them)."""
    return {name: spec.default for name, spec in HPARAMS.items() if spec.default is not REQUIRED
            and name not in IMPROVED}


def improved_defaults() -> dict[str, Any]:
    """The improved recipe's hyperparameters with their (published-behaviour) defaults."""
    return {name: HPARAMS[name].default for name in IMPROVED}


def shown(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_SHOWN` characters: messages quote values from anyone's files."""
    try:
        text = repr(value)
    except ValueError:  # an int of over 4300 digits has no repr
        text = f"<{type(value).__name__} too long to show>"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _key_text(key: Any) -> str:
    """A hyperparameter name for a message: a string as it is (cut, escaped), any other key as its repr."""
    text = shown(key)
    return text[1:-1] if isinstance(key, str) and text.endswith(("'", '"')) else text


def _number(spec: Hparam, value: Any, bad: str) -> int | float:
    """``value`` as the spec's number type, refusing bools, strings, non-finite numbers and fractional ints."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HparamError(f"{bad}: expected {spec.allowed()}")
    try:  # float(10**400) overflows; int(inf) and int(nan) fail
        number = float(value)
    except OverflowError:
        raise HparamError(f"{bad}: expected a finite number, {spec.allowed()}") from None
    if not math.isfinite(number):
        raise HparamError(f"{bad}: expected a finite number, {spec.allowed()}")
    if spec.kind is int:
        if number != int(number) or (isinstance(value, int) and abs(value) > 2**53):
            raise HparamError(f"{bad}: expected {spec.allowed()}")
        return int(value)
    return number


def _check_value(name: str, spec: Hparam, value: Any, check_files: bool) -> Any:
    bad = f"hyperparameter {name}={shown(value)}"
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise HparamError(f"{bad}: expected true or false")
        return value
    if spec.kind in (int, float):
        value = _number(spec, value, bad)
        too_low = spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low)
        too_high = spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high)
        if too_low or too_high:
            raise HparamError(f"{bad}: expected {spec.allowed()}")
        return value
    if not isinstance(value, str):
        raise HparamError(f"{bad}: expected {spec.allowed()}")
    if spec.choices is not None and value not in spec.choices:
        if spec.check is None:
            raise HparamError(f"{bad}: expected {spec.allowed()}")
        if check_files:
            problem = spec.check(value)
            if problem:
                raise HparamError(f"{bad}: {problem}")
    return value


def _check_known(values: Mapping[Any, Any]) -> None:
    # Keys come from anyone's YAML or JSON: they may be numbers, None or huge strings.
    unknown = sorted(_key_text(k) for k in values if k not in HPARAMS)
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise HparamError(f"unknown hyperparameter(s) {', '.join(unknown[:5])}{more}; known: {', '.join(HPARAMS)}")


def check_values(values: Mapping[str, Any], check_files: bool = True) -> dict[str, Any]:
    """Check only the hyperparameters given (known keys, types, ranges), not that the set is complete: e.g. the
    ``--hparam`` overrides of a config, so that a bad one is blamed on the option rather than the file."""
    _check_known(values)
    return {name: _check_value(name, HPARAMS[name], value, check_files) for name, value in values.items()}


def validate(values: Mapping[str, Any], check_files: bool = True, source: str = "") -> dict[str, Any]:
    """Check every hyperparameter against :data:`HPARAMS` and return them with the defaults filled in.

    Raises :class:`HparamError` (one line naming the key and value) for an unknown key, a missing required one,
    a wrong type or a value out of range. ``check_files=False`` skips checks that files exist (a checkpoint
    from another machine names weight files that are not here and not needed). ``source`` prefixes messages.
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(values, Mapping):
        raise HparamError(f"{prefix}hyperparameters must be a mapping of names to values, not {type(values).__name__}")
    try:
        _check_known(values)
        missing = [name for name, spec in HPARAMS.items() if spec.default is REQUIRED and name not in values]
        if missing:
            raise HparamError(f"missing hyperparameter(s) {', '.join(missing)}")
        return {**optional_defaults(), **check_values(values, check_files)}
    except HparamError as exc:
        raise HparamError(f"{prefix}{exc}") from None
