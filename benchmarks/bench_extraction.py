"""Speed of the frozen backbone on CPU: channels-last (what backbones.FrozenFeatureExtractor uses) vs the default
layout.

    python benchmarks/bench_extraction.py [--batch 64] [--size 256] [--rounds 5]

Both layouts run the same extractor on the same batch, alternating round by round (the machines are noisy, so
the ratio is measured side by side), for MobileNetV3-Large (random weights: the same speed) and the offline
EfficientNet-Lite0. Prints milliseconds per image of each layout, the speed-up and the largest feature difference.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from samespace import backbones, preprocess  # noqa: E402

BACKBONES = (("mobilenet_v3_large", "none"), ("efficientnet_lite0", "imagenet"))


def ms_per_image(forward, images: torch.Tensor) -> float:  # noqa: ANN001 - any callable on a batch
    start = time.perf_counter()
    with torch.inference_mode():
        forward(images)
    return (time.perf_counter() - start) / len(images) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="input side (decoding.IMAGE_SIZE is 256)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    for backbone, weights in BACKBONES:
        extractor = backbones.build_feature_extractor(backbone, weights)  # channels-last inside
        default_body = copy.deepcopy(extractor.body).to(memory_format=torch.contiguous_format)

        def channels_last(x: torch.Tensor, extractor: backbones.FrozenFeatureExtractor = extractor) -> torch.Tensor:
            return extractor(x)

        def default_layout(x: torch.Tensor, body: torch.nn.Module = default_body, name: str = backbone) -> torch.Tensor:
            return body(preprocess.normalise(x, name)).flatten(1)

        with torch.inference_mode():
            difference = (channels_last(images[:8]) - default_layout(images[:8])).abs().max().item()
        ms_per_image(channels_last, images[:8])  # warm-up of both
        ms_per_image(default_layout, images[:8])
        fast, slow = [], []
        for _ in range(args.rounds):
            fast.append(ms_per_image(channels_last, images))
            slow.append(ms_per_image(default_layout, images))
        best_fast, best_slow = min(fast), min(slow)
        print(f"{backbone}: default layout {best_slow:.1f} ms/image, channels-last {best_fast:.1f} ms/image: "
              f"{best_slow / best_fast:.2f}x faster (best of {args.rounds} batches of {args.batch} at "
              f"{args.size}px; largest feature difference {difference:.1e})", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
