"""Seeded fuzzing of what a training run reads from others: a checkpoint's metadata.json and trial_state.pkl, an
experiment config and --hparam values, fed to the validation functions (no training, so the file takes seconds).

Each mutated input is either accepted with every value in range, or refused with a one-line UsageError or
CheckpointError; never another exception, never a hang (each case runs under a deadline), and never a payload
that runs (a marker file it would create never appears).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import pickle
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import model_def
from samespace import checkpoint_loading, hparams, local_runs, resume_checks, run_config

SEED = 1234
CASES = 500
DEADLINE_S = 5.0  # per case: generous on 2 cores, far below a hang
MAX_BATCHES = 1000
ERRORS = (run_config.UsageError, checkpoint_loading.CheckpointError)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds`` (a hang is a failure)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """(result, None) when ``call`` accepts its input, (None, error) when it refuses it with one line of the
    project's error types; any other exception or a hang fails the test."""
    with deadline(DEADLINE_S):
        try:
            return call(), None
        except ERRORS as exc:
            message = str(exc)
            assert message and "\n" not in message and "\r" not in message and len(message) < 2000, repr(message)
            return None, exc


def assert_in_range(values: dict[str, Any]) -> None:
    """Every hyperparameter of an accepted set has its declared type and lies in its declared range."""
    for name, value in values.items():
        spec = hparams.HPARAMS[name]
        if spec.kind in (int, float):
            assert type(value) is spec.kind and math.isfinite(value), (name, value)
            if spec.low is not None:
                assert value > spec.low if spec.low_open else value >= spec.low, (name, value)
            if spec.high is not None:
                assert value < spec.high if spec.high_open else value <= spec.high, (name, value)
        elif spec.kind is bool:
            assert type(value) is bool, (name, value)
        else:
            assert isinstance(value, str), (name, value)


# --------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------

TOKENS = [b"1e12", b"-5", b"true", b"null", b'"x"', b"[", b"{", b"}", b"]", b",", b":", b"99999999999999999999",
          b"NaN", b"Infinity", b"-0", b"1.5", b"2", b'"steps_completed"', b"\xff", b"\x00", b"\\u0000", b"[" * 3000]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-able value: numbers at and beyond every edge, strings, containers."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([0, 1, -1, 147, MAX_BATCHES, MAX_BATCHES + 1, -(2**63), 2**63, 10**30, 2**53 + 1])
    if kind == 1:
        return rng.choice([0.0, 1.0, 147.0, 1e12, -1e-300, 1e308, float("inf"), float("nan"), 0.5])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind in (3, 4):
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 12)))
    if kind == 5:
        return rng.choice(["147", "1e3", "", " ", "\n", "imagenet", "none", "true", "0x10"])
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {str(random_json(rng, depth + 1))[:8]: random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def mutate_bytes(rng: random.Random, blob: bytes) -> bytes:
    """One random byte-level mutation: flip, insert a token, delete, duplicate or truncate."""
    if not blob:
        return rng.choice(TOKENS)
    at = rng.randrange(len(blob))
    kind = rng.randrange(5)
    if kind == 0:
        return blob[:at] + bytes([rng.randrange(256)]) + blob[at + 1 :]
    if kind == 1:
        return blob[:at] + rng.choice(TOKENS) + blob[at:]
    if kind == 2:
        return blob[:at] + blob[at + rng.randrange(1, 16) :]
    if kind == 3:
        end = min(len(blob), at + rng.randrange(1, 32))
        return blob[:end] + blob[at:end] * rng.randrange(1, 4) + blob[end:]
    return blob[:at]


def mutated(rng: random.Random, blob: bytes, structured: Callable[[random.Random], bytes]) -> bytes:
    """Half the cases: a structured variant (a field set to a random value); all: 0 to 3 byte mutations."""
    if rng.random() < 0.5:
        blob = structured(rng)
    for _ in range(rng.randrange(0 if blob else 1, 4)):
        blob = mutate_bytes(rng, blob)
    return blob


# --------------------------------------------------------------------------------------------
# (a) metadata.json and trial_state.pkl
# --------------------------------------------------------------------------------------------

METADATA = {"steps_completed": 147, "framework": "torch-2.5.1", "format": "pickle"}
TRIAL_STATE = {"trial_id": 0, "last_ckpt": 147, "step_id": 0, "last_val": 147, "batches_trained": 147,
               "epochs_trained": 3}


def test_fuzz_metadata_json(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    checkpoint = tmp_path / "store" / "uuid"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state_dict.pth").write_bytes(b"")
    base = json.dumps(METADATA).encode()

    def structured(rng: random.Random) -> bytes:
        document = dict(METADATA)
        document[rng.choice(["steps_completed", "steps_completed", "format", "extra"])] = random_json(rng)
        if rng.random() < 0.1:
            return json.dumps(random_json(rng)).encode()
        return json.dumps(document).encode()

    accepted = refused = 0
    for _ in range(CASES):
        (checkpoint / "metadata.json").write_bytes(mutated(rng, base, structured))
        result, error = outcome(functools.partial(resume_checks.resume_point, checkpoint, MAX_BATCHES))
        if error is None:
            name, steps = result
            assert name == "uuid" and type(steps) is int and 0 <= steps <= MAX_BATCHES
            accepted += 1
        else:
            assert str(checkpoint / "metadata.json") in str(error), str(error)
            refused += 1
    assert accepted >= 50 and refused >= 50, (accepted, refused)


class Touch:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_fuzz_trial_state_pickle(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    marker = tmp_path / "payload-ran"
    path = tmp_path / "trial_state.pkl"
    base = pickle.dumps(TRIAL_STATE)

    def structured(rng: random.Random) -> bytes:
        state: dict[str, Any] = dict(TRIAL_STATE)
        key = rng.choice([*TRIAL_STATE, "extra"])
        state[key] = Touch(marker) if rng.random() < 0.2 else random_json(rng)
        return pickle.dumps(state if rng.random() < 0.9 else random_json(rng), protocol=rng.randrange(0, 6))

    accepted = refused = 0
    for _ in range(CASES):
        path.write_bytes(mutated(rng, base, structured))
        _, error = outcome(functools.partial(resume_checks.check_trial_state, path, 147))
        if error is None:  # what Determined would then unpickle is exactly a trial state
            state = pickle.loads(path.read_bytes())
            assert set(state) <= resume_checks.TRIAL_STATE_KEYS and all(type(v) is int for v in state.values())
            accepted += 1
        else:
            assert str(path) in str(error), str(error)
            refused += 1
    assert not marker.exists()
    assert accepted >= 20 and refused >= 50, (accepted, refused)


# --------------------------------------------------------------------------------------------
# (b) experiment configs
# --------------------------------------------------------------------------------------------

YAML_SNIPPETS = [
    "!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system", "&a [1, 2]", "*a", "{", "[",
    "- x", ": :", "1e999", ".nan", "-.inf", "!!binary aGVsbG8=", "!!set {a, b}", "2024-01-01", "? [1, 2]\n: 3",
    "\t", "%YAML 1.1\n---", "---", "...", "\x00", "'", '"', "~", "0x10", "0o17", "1_000", "!!float 1", "!!int 'x'",
    "learning_rate: 1e30", "hyperparameters: [1, 2]", "hyperparameters:", "  learning_rate: {type: const}",
    "  alpha: {type: const, val: 1}", "  head_rank: 99999999", "  global_batch_size: -1", "  extra: 1",
]


def test_fuzz_experiment_config(tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    marker = tmp_path / "payload-ran"
    config = tmp_path / "config.yaml"
    bases = [(model_def.REPO / name).read_text() for name in ("const.yaml", "improved.yaml")]

    def structured(rng: random.Random) -> bytes:
        document = yaml.safe_load(rng.choice(bases))
        table = document["hyperparameters"]
        name = rng.choice([*table, *hparams.HPARAMS, "extra"])
        table[name] = random_json(rng) if rng.random() < 0.7 else {"type": "const", "val": random_json(rng)}
        return yaml.safe_dump(document).encode()

    def text_mutation(rng: random.Random, text: str) -> str:
        lines = text.splitlines()
        at = rng.randrange(len(lines) + 1)
        kind = rng.randrange(3)
        if kind == 0:
            snippet = rng.choice(YAML_SNIPPETS).replace("{marker}", str(marker))
            lines.insert(at, rng.choice(["", "  ", "hyperparameters:\n  learning_rate: "]) + snippet)
        elif kind == 1 and lines:
            del lines[min(at, len(lines) - 1)]
        elif lines:
            line = lines[min(at, len(lines) - 1)]
            lines.insert(at, line)
        return "\n".join(lines)

    accepted = refused = 0
    for _ in range(CASES):
        if rng.random() < 0.5:
            text = rng.choice(bases)
            for _ in range(rng.randrange(1, 4)):
                text = text_mutation(rng, text)
            blob = text.encode()
        else:
            blob = mutated(rng, rng.choice(bases).encode(), structured)
        config.write_bytes(blob)
        result, error = outcome(functools.partial(local_runs.plan_run, model_def.parse_args(["--config", str(config)]),
                                                  None))
        if error is None:
            assert_in_range(hparams.validate(result.hparams))
            accepted += 1
        else:
            refused += 1
    assert not marker.exists()
    assert accepted >= 50 and refused >= 50, (accepted, refused)


# --------------------------------------------------------------------------------------------
# (c) --hparam values
# --------------------------------------------------------------------------------------------

VALUES = ["1e-3", "0.002", "1", "0", "-1", "1e30", "1e308", "1e999", ".inf", "-.inf", ".nan", "nan", "true",
          "false", "yes", "null", "", " ", "[1, 2]", "{a: 1}", "{type: const, val: 0.1}", "a: b: c", "[[[", "0x10",
          "1_000", "2**10", "imagenet", "none", "mobilenet_v3_large", "efficientnet_lite0", "concat", "cosine",
          "reshoot", "9" * 400, "!!python/object/apply:os.system ['touch {marker}']", "!!binary aGVsbG8=",
          "2024-01-01", "~/nowhere/w.pt", "/nowhere/\x00w.pt", "x" * 5000]


def valid_value(rng: random.Random, name: str) -> str:
    """A value in the declared range of a known hyperparameter, written as YAML in one of several ways."""
    spec = hparams.HPARAMS[name]
    if spec.kind is bool:
        return rng.choice(["true", "false", "True", "no"])
    if spec.choices is not None:
        return rng.choice(spec.choices)
    low = 0.0 if spec.low is None else spec.low
    high = 1.0 if spec.high is None else min(spec.high, 256)
    if spec.kind is int:
        return str(rng.randint(int(low), int(high)))
    value = rng.uniform(low, high)
    if value == low and spec.low_open:
        value = (low + high) / 2
    return rng.choice([f"{value}", f"{value:.3e}", f"{value:g}"])


def random_hparam(rng: random.Random, marker: Path) -> str:
    """A KEY=VALUE item: a known or odd key, and a value in range, from the edge list, mutated or random text."""
    key = rng.choice([*hparams.HPARAMS, *hparams.HPARAMS, "", " ", "learning_rat", "1", "a=b", "\x00"])
    if key in hparams.HPARAMS and rng.random() < 0.6:
        return f"{key}={valid_value(rng, key)}"
    kind = rng.randrange(4)
    if kind == 0:
        value = "".join(chr(rng.randrange(1, 0x250)) for _ in range(rng.randrange(0, 10)))
    elif kind == 1:
        value = mutate_bytes(rng, rng.choice(VALUES).encode()).decode("utf-8", errors="replace")
    else:
        value = rng.choice(VALUES)
    return f"{key}={value.replace('{marker}', str(marker))}" if rng.random() < 0.97 else value


def test_fuzz_hparam_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The config is fuzzed above; here each case starts from const.yaml as read once (reading it is most of a case).
    const = run_config.read_config(model_def.REPO / "const.yaml")
    monkeypatch.setattr(run_config, "read_config", lambda path: json.loads(json.dumps(const)))
    rng = random.Random(SEED + 3)
    marker = tmp_path / "payload-ran"
    accepted = refused = 0
    for _ in range(CASES):
        # --hparam=ITEM: an item starting with "-" is still the option's value, not another option
        argv = [f"--hparam={random_hparam(rng, marker)}" for _ in range(rng.randrange(1, 4))]
        result, error = outcome(functools.partial(local_runs.plan_run, model_def.parse_args(argv), None))
        if error is None:
            assert_in_range(hparams.validate(result.hparams))
            accepted += 1
        else:
            refused += 1
    assert not marker.exists()
    assert accepted >= 50 and refused >= 50, (accepted, refused)


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzing_is_deterministic(seed: int) -> None:
    """The same seed draws the same cases (a failure reproduces from the seed alone)."""
    first, second = random.Random(seed), random.Random(seed)
    assert [random_hparam(first, Path("m")) for _ in range(50)] == [random_hparam(second, Path("m")) for _ in range(50)]
