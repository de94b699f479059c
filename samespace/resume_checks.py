"""What a local ``--resume`` reads back, checked before Determined reads it: metadata.json, trial_state.pkl (by
opcode: never unpickled with code), the weights and the hyperparameters they were trained with.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
from pathlib import Path
from typing import Any

import torch

from samespace import checkpoint_loading, run_config
from samespace import hparams as hparams_table

MAX_TRIAL_STATE_BYTES = 1 << 16
# What Determined 0.38 pickles into trial_state.pkl: vars() of its _TrialState, six ints.
TRIAL_STATE_KEYS = frozenset({"trial_id", "last_ckpt", "step_id", "last_val", "batches_trained", "epochs_trained"})
# Pickle opcodes that build only None, bools, ints, floats, strings, lists, tuples and dicts (and the memo and
# framing that go with them). Every other opcode can name or call a Python object (GLOBAL, REDUCE, BUILD...).
PLAIN_PICKLE_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE",
    "BINUNICODE", "BINUNICODE8",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
})


def resume_point(checkpoint: Path, max_batches: int | None = None) -> tuple[str, int]:
    """(storage id, batches trained) of a local checkpoint folder, from the metadata Determined wrote in it.

    Everything Determined reads back is checked first, as a stranger's file: metadata.json (a JSON object whose
    ``steps_completed`` is an int in [0, max_batches]), trial_state.pkl (a pickle of plain values only, which
    Determined unpickles; its legacy workload_sequencer.pkl is refused) and state_dict.pth (present). Each problem
    is a CheckpointError naming the file, except more steps than ``max_batches`` (--batches): a UsageError naming
    both, as the run's length is then what is wrong.
    """
    if not checkpoint.is_dir():
        raise run_config.UsageError(f"--resume {checkpoint}: not a checkpoint folder (no such folder)")
    metadata = checkpoint / "metadata.json"
    try:
        document = json.loads(run_config.read_small_file(metadata, run_config.MAX_METADATA_BYTES).decode("utf-8"))
    except FileNotFoundError as exc:
        raise run_config.UsageError(
            f"--resume {checkpoint}: not a checkpoint folder ({metadata}: no such file)"
        ) from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise checkpoint_loading.CheckpointError(
            f"{metadata}: cannot read ({type(exc).__name__}: {run_config.first_line(exc)})"
        ) from exc
    if not isinstance(document, dict) or "steps_completed" not in document:
        raise checkpoint_loading.CheckpointError(f"{metadata}: expected a JSON object with steps_completed")
    steps = document["steps_completed"]
    if type(steps) is not int or steps < 0:
        high = "the run's length" if max_batches is None else max_batches
        raise checkpoint_loading.CheckpointError(
            f"{metadata}: steps_completed={hparams_table.shown(steps)}: expected a whole number "
            f"of batches in [0, {high}]"
        )
    if max_batches is not None and steps > max_batches:  # a run's length is its total, not what is left
        shown = hparams_table.shown(steps)
        raise run_config.UsageError(
            f"--resume {checkpoint}: the checkpoint has already trained {shown} batches (steps_completed in "
            f"{metadata}), and --batches {max_batches} is fewer; give the run's total length: --batches {shown} or more"
        )
    if (checkpoint / "trial_state.pkl").exists():  # Determined unpickles it on resume
        check_trial_state(checkpoint / "trial_state.pkl", steps)
    elif (checkpoint / "workload_sequencer.pkl").exists():  # unpickled in its place; only pre-Trainer APIs wrote it
        raise checkpoint_loading.CheckpointError(
            f"{checkpoint / 'workload_sequencer.pkl'}: refused: a legacy Determined trial state, "
            "which model_def.py never writes; give the folder model_def.py printed"
        )
    if not (checkpoint / "state_dict.pth").is_file():
        raise checkpoint_loading.CheckpointError(
            f"{checkpoint}: no state_dict.pth: not a complete checkpoint (give the folder model_def.py printed)"
        )
    return checkpoint.name, steps


class NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler that builds plain values only: any class or function the stream names is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def check_trial_state(path: Path, steps: int) -> None:
    """Check a pickle Determined will unpickle on resume, without running it: only plain-value opcodes (no
    GLOBAL, REDUCE, BUILD...), then the six ints Determined's trial state holds, agreeing with metadata.json."""
    try:
        blob = run_config.read_small_file(path, MAX_TRIAL_STATE_BYTES)
        for opcode, _, position in pickletools.genops(blob):
            if opcode.name not in PLAIN_PICKLE_OPCODES:
                raise checkpoint_loading.CheckpointError(
                    f"{path}: refused: the pickle names or calls Python objects ({opcode.name} at "
                    f"byte {position}); SameSpace never runs code stored in a checkpoint"
                )
        state = NoGlobalsUnpickler(io.BytesIO(blob)).load()
    except checkpoint_loading.CheckpointError:
        raise
    except Exception as exc:  # any failure to parse a stranger's pickle means it is not a trial state
        raise checkpoint_loading.CheckpointError(f"{path}: not a Determined trial state ({type(exc).__name__}: "
                              f"{run_config.first_line(exc)})") from None
    if (not isinstance(state, dict) or not set(state) <= TRIAL_STATE_KEYS
            or any(type(v) is not int or not 0 <= v < 2**63 for v in state.values())):
        raise checkpoint_loading.CheckpointError(
            f"{path}: not a Determined trial state (expected a dict of the non-negative ints "
            f"{', '.join(sorted(TRIAL_STATE_KEYS))})"
        )
    if state.get("trial_id") == 0 and state.get("batches_trained", steps) != steps:  # 0: a local run wrote it
        raise checkpoint_loading.CheckpointError(
            f"{path}: batches_trained={state.get('batches_trained')} disagrees with "
            f"steps_completed={steps} in metadata.json"
        )


def check_same_hparams(checkpoint: Path, hparams: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint trained with other hyperparameters, naming those that differ.

    A local checkpoint's load_data.json holds the hyperparameters it was trained with; a folder without them is
    checked later, by its weights' names and shapes (check_weights_fit).
    """
    load_data = checkpoint_loading.read_load_data(checkpoint)
    trained = load_data.get("hparams")
    if not trained:
        return
    try:
        there = {**hparams_table.improved_defaults(), **hparams_table.validate(trained, check_files=False,
                                                              source=str(checkpoint / "load_data.json"))}
    except hparams_table.HparamError as exc:
        raise checkpoint_loading.CheckpointError(str(exc)) from exc
    here = {**hparams_table.improved_defaults(), **hparams_table.validate(hparams, check_files=False)}
    differ = [f"{k}={hparams_table.shown(there.get(k))} there, {hparams_table.shown(here.get(k))} here"
              for k in sorted(set(there) | set(here)) if there.get(k) != here.get(k)]
    if differ:
        raise run_config.UsageError(f"--resume {checkpoint}: the checkpoint was trained with other hyperparameters "
                         f"({'; '.join(differ)}); give the --config/--hparam it was trained with")


def check_resume_weights(checkpoint: Path, network: torch.nn.Module) -> None:
    """Before Determined loads a local checkpoint into ``network``: its weights are readable without running
    code, finite, and fit the network (else one line naming the checkpoint, not a state_dict traceback)."""
    state = checkpoint_loading.read_state_dict(checkpoint / "state_dict.pth")
    checkpoint_loading.check_finite(state, checkpoint / "state_dict.pth")
    checkpoint_loading.check_weights_fit(state, network, checkpoint)
