"""Reduced precision: does the backbone in bf16 / fp16 keep the ranking, and how much faster does it embed?

    python benchmarks/bench_precision.py [--real data/real] [--device cpu|cuda] [--precisions fp32 bf16 fp16]

For each development set's Test Data (the generated sample set, seed 0, written to a temporary folder; the
real-photo set when ``--real`` points at a build) and each backbone method (cosine, relative, calibrated): the
photos are decoded once, embedded with the backbone in each precision (samespace.backbones.PRECISIONS; autocast),
and every unique pair is scored. Printed per precision: AP and its difference from fp32 (target: within 0.001),
the lowest cosine between a photo's fp32 and reduced-precision features, and the embedding time with its ratio to
fp32's. Default precisions: fp32 and bf16 on a CPU (float16 is emulated there, about 15x slower), all three on
CUDA. Nothing is tuned: the figures are for choosing a default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from samespace import decoding, labelling, matching, scorer_choice  # noqa: E402
from samespace.devsets import sample_set  # noqa: E402

METHODS = ("cosine", "relative", "calibrated")


def measure(method: str, precision: str, device: str, photos: tuple) -> dict:
    from sklearn.metrics import average_precision_score

    images, aspects, labels = photos
    scorer, _, _ = scorer_choice.choose_scorer(method, device=device, precision=precision)
    start = time.perf_counter()
    scorer.add(images, aspects)
    scorer.finish()
    seconds = time.perf_counter() - start
    left, right = matching.upper_pairs(0, len(labels), len(labels))
    ap = float(average_precision_score(labels[left] == labels[right], scorer.score(left, right)))
    vectors = np.asarray(scorer.vectors, np.float32)
    return {"ap": ap, "seconds": seconds, "vectors": vectors / np.linalg.norm(vectors, axis=1, keepdims=True)}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, help="a real-photo build (samespace devset build DIR)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"))
    args = parser.parse_args(argv)
    precisions = args.precisions or (["fp32", "bf16", "fp16"] if args.device == "cuda" else ["fp32", "bf16"])
    if "fp32" not in precisions:
        precisions = ["fp32", *precisions]
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| split | method | precision | AP | AP - fp32 | lowest cos(fp32, this) | embed s | time / fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        splits = {"sample": sample_set.write_sample_dataset(Path(tmp) / "sample", seed=0) / "Test Data"}
        if args.real:
            splits["real"] = args.real / "Test Data"
        for name, split in splits.items():
            paths = labelling.find_images(split)
            images, aspects, kept, _ = decoding.decode_images(paths, progress=False)
            photos = (images, aspects, labelling.group_ids([paths[k] for k in kept], split))
            for method in METHODS:
                base = measure(method, "fp32", args.device, photos)
                for precision in precisions:
                    r = base if precision == "fp32" else measure(method, precision, args.device, photos)
                    agreement = float((base["vectors"] * r["vectors"]).sum(1).min())
                    worst = max(worst, abs(r["ap"] - base["ap"]))
                    print(f"| {name} | {method} | {precision} | {r['ap']:.4f} | {r['ap'] - base['ap']:+.4f} | "
                          f"{agreement:.5f} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f} |", flush=True)
    print(f"largest AP difference from fp32: {worst:.4f} ({'within' if worst <= 1e-3 else 'OVER'} 0.001)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
