"""``samespace evaluate`` (and ``python model_inference.py``): evaluate a checkpoint on one labelled split.

    samespace evaluate --checkpoint DIR --data-dir "data/Airbnb Data/Test Data" \
        [--pairing faithful|unique|both] [--json FILE] [--plots DIR] [--scores FILE] \
        [--methods model whash phash cosine relative verified calibrated] [--batch-size N] \
        [--device auto|cpu|cuda] [--cache-dir DIR] [--write-threshold] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from samespace import cli, labelling, outputs, scoring_methods


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would replace a photo or a file we did not write (outputs.py)."""
    from samespace import evaluation

    kinds = {"json": outputs.EVALUATION_JSON, "scores": outputs.SCORES_CSV}
    targets = [outputs.Target(f"--{o}", Path(getattr(args, o)), stream=True, kind=kind) for o, kind in kinds.items()
               if getattr(args, o)]
    if args.plots:
        targets.append(outputs.Target("--plots", Path(args.plots), is_dir=True, members=evaluation.PLOT_FILES,
                                      kind=outputs.PLOT))
    try:
        outputs.check_outputs(targets, inputs=[args.data_dir], overwrite=args.overwrite)
    except outputs.OutputError as exc:
        raise evaluation.EvaluationError(str(exc)) from exc


EXAMPLES = """examples:
  samespace evaluate --checkpoint checkpoints/<id> --data-dir "data/sample/Test Data" --json eval.json
  samespace evaluate --checkpoint checkpoints/<id> --data-dir "data/real/Test Data" --plots plots/ --write-threshold
  samespace evaluate --checkpoint checkpoints/<id> --data-dir "data/Airbnb Data/Test Data" --pairing faithful
"""


def main(argv: Sequence[str] | None = None, prog: str = "samespace evaluate") -> int:
    """The command line: 0 on success, 2 with a one-line error (``--debug``: the traceback)."""
    parser = cli.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="a checkpoint folder written by model_def.py"
    )
    parser.add_argument("--data-dir", required=True, help="one split folder, e.g. 'data/Airbnb Data/Test Data' (not "
                        "the dataset folder that holds both splits)")
    parser.add_argument("--pairing", choices=scoring_methods.PAIRING_CHOICES, default="both")
    parser.add_argument("--json", help="write the metrics as JSON (keys 'faithful' and 'unique')")
    parser.add_argument("--plots", help="folder for roc.png and precision_recall.png (unique pairs)")
    parser.add_argument("--scores", help="CSV of every unique pair: image1,image2,label,<score per method>")
    parser.add_argument(
        "--write-threshold",
        action="store_true",
        help=f"store the model's best-F1 threshold in <checkpoint>/{scoring_methods.THRESHOLD_FILE} for "
        f"find_duplicates.py (needs at least {scoring_methods.MIN_CALIBRATION_PAIRS} duplicate and "
        "non-duplicate unique pairs)",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist and were not written by SameSpace, or hold another "
                        "kind of SameSpace file")
    parser.add_argument(
        "--methods", nargs="+", choices=scoring_methods.METHOD_CHOICES, default=list(scoring_methods.METHOD_CHOICES),
        metavar="METHOD", help=f"the methods scored on the unique pairs: {', '.join(scoring_methods.METHOD_CHOICES)} "
        "(default: all)"
    )
    parser.add_argument("--batch-size", type=cli.positive_int, default=64, metavar="N",
                        help="images per backbone batch (default: 64)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--cache-dir", help="feature cache folder shared with model_def.py (default: its default; "
                        "'none' for no cache file)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    from samespace import evaluation  # after --help: it loads torch

    try:
        with cli.clean_warnings():
            _run(args)
    except (
        evaluation.EvaluationError,
        labelling.DataError,
        ValueError,
        OSError,
    ) as exc:  # OSError: e.g. the disk filled up
        if args.debug:
            raise
        print(f"error: {outputs.printable_name(str(exc), quote=False)}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    """Check the options and outputs, evaluate, write the outputs (errors are raised, main prints them)."""
    from samespace import evaluation
    from samespace.backbones import resolve_device
    from samespace.checkpoint_loading import check_folder, load_model
    from samespace.feature_cache import DEFAULT_CACHE_DIR

    cache_dir = None if (args.cache_dir or "").lower() == "none" else (args.cache_dir or DEFAULT_CACHE_DIR)
    device = resolve_device(args.device)
    checkpoint = Path(args.checkpoint)
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise evaluation.EvaluationError(f"{data_dir}: not a directory")
    check_folder(checkpoint)  # the same words as samespace find, before any photo is listed
    check_output_paths(args)
    if args.write_threshold and (args.pairing == "faithful" or "model" not in args.methods):
        raise evaluation.EvaluationError("--write-threshold needs the unique evaluation of the model "
                              "(--pairing unique or both, --methods including model)")
    evaluation.check_split(data_dir, args.write_threshold)
    model = load_model(checkpoint, device=device)
    methods = args.methods if args.pairing != "faithful" else ["model"]
    report, unique = evaluation.evaluate(
        model, data_dir, args.pairing, methods, args.batch_size, device, cache_dir=cache_dir
    )
    # An output streamed to standard output keeps it for itself: the table goes to stderr then.
    streamed = any(outputs.is_stdout(o) for o in (args.json, args.scores) if o)
    print(evaluation.table(report), file=sys.stderr if streamed else sys.stdout)
    if args.json:
        outputs.atomic_write(args.json, json.dumps(report, indent=2) + "\n")
    if args.scores and unique:
        outputs.atomic_write(args.scores, evaluation.scores_csv(unique, data_dir))
    if args.plots and unique:
        for path in evaluation.save_plots(unique, Path(args.plots)):
            print(f"plot: {path}")
    if args.write_threshold:
        path, replaced = evaluation.write_threshold(checkpoint, report)
        print(f"\nbest-F1 threshold written to {path}" + (f" ({replaced})" if replaced else ""))
