"""Speed of the frozen backbone on CPU: how backbones.FrozenFeatureExtractor runs it (channels-last, a few images at
a time) against the whole batch in one pass, in channels-last and in the default layout.

    python benchmarks/bench_extraction.py [--batch 64] [--size 256] [--rounds 3] [--chunks 2 4 8 16]

Every variant runs the same extractor on the same batch, round by round in turn (the machines are noisy, so the
ratios are measured side by side), for MobileNetV3-Large (random weights: the same speed) and the offline
EfficientNet-Lite0. Prints milliseconds per image of each, its speed against the one-pass channels-last run and its
largest feature difference from that run.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from samespace import backbones, preprocess  # noqa: E402

BACKBONES = (("mobilenet_v3_large", "none"), ("efficientnet_lite0", "imagenet"))


def ms_per_image(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        forward(images)
    return (time.perf_counter() - start) / len(images) * 1000


def chunked(extractor: backbones.FrozenFeatureExtractor, chunk: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The extractor, running its body over ``chunk`` images at a time (the batch size: one pass)."""

    def forward(images: torch.Tensor) -> torch.Tensor:
        extractor.cpu_chunk = chunk
        return extractor(images)

    return forward


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="input side (decoding.IMAGE_SIZE is 256)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8, 16],
                        help=f"images per body pass to compare (the shipped CPU_CHUNK is {backbones.CPU_CHUNK})")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    for backbone, weights in BACKBONES:
        extractor = backbones.build_feature_extractor(backbone, weights)  # channels-last inside
        default_body = copy.deepcopy(extractor.body).to(memory_format=torch.contiguous_format)

        def default_layout(x: torch.Tensor, body: torch.nn.Module = default_body, name: str = backbone) -> torch.Tensor:
            return body(preprocess.normalise(x, name)).flatten(1)

        variants = {"default layout, one pass": default_layout,
                    "channels-last, one pass": chunked(extractor, args.batch)}
        for chunk in sorted(set(args.chunks)):
            variants[f"channels-last, {chunk} at a time"] = chunked(extractor, chunk)
        with torch.inference_mode():
            reference = variants["channels-last, one pass"](images)
            differences = {name: (forward(images) - reference).abs().max().item() for name, forward in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, forward in variants.items():
                times[name].append(ms_per_image(forward, images))
        one_pass = min(times["channels-last, one pass"])
        print(f"{backbone} (best of {args.rounds} batches of {args.batch} at {args.size}px):")
        for name in variants:
            best = min(times[name])
            shipped = " (shipped)" if name.endswith(f" {backbones.CPU_CHUNK} at a time") else ""
            print(f"  {name + shipped:40s} {best:6.1f} ms/image  {one_pass / best:5.2f}x  "
                  f"largest feature difference {differences[name]:.1e}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
