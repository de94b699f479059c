"""Training throughput with and without the feature cache, on this machine's CPU.

    python benchmarks/bench_training.py [--steps 30] [--uncached-steps 4] [--test-images 631]

Both runs use SiameseTrial itself (its loaders and train_batch) on a generated sample set, with
mobilenet_v3_large and random weights (timing does not depend on the weight values), batch 64. Also
times the one-off feature extraction per image (8 variants) and projects a real-size epoch
(199,552 pairs; 631 training images plus the test images extracted once). Target: cached >= 20x.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from determined import pytorch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import model_def  # noqa: E402
from samespace import pair_dataset  # noqa: E402
from samespace.devsets import sample_set  # noqa: E402
from samespace.feature_cache import extract_features  # noqa: E402
from samespace.siamese import SiameseNetwork

BATCH = 64
TARGET = 20.0
REAL_PAIRS, REAL_TRAIN_IMAGES = 199_552, 631
HPARAMS = {"global_batch_size": BATCH, "learning_rate": 0.002061, "alpha": 0.926, "dropout1": 0.306,
           "dropout2": 0.491, "dropout3": 0.562, "backbone": "mobilenet_v3_large", "backbone_weights": "none"}


class _Timer(pytorch.PyTorchCallback):
    """Records when each reporting period ends; stops the trial after the second (no validation)."""

    def __init__(self, context: pytorch.PyTorchTrialContext) -> None:
        self.context = context
        self.ends: list[float] = []

    def on_training_workload_end(self, avg_metrics: dict, batch_metrics: list) -> None:
        self.ends.append(time.perf_counter())
        if len(self.ends) == 2:
            self.context.set_stop_requested(True)


class _TimedTrial(model_def.SiameseTrial):
    def build_callbacks(self) -> dict[str, pytorch.PyTorchCallback]:
        self.timer = _Timer(self.context)
        return {**super().build_callbacks(), "timer": self.timer}


def time_training(hparams: dict, data_dir: Path, cache_dir: Path, warmup: int, steps: int) -> float:
    """Seconds per training step under the Trainer (loader, train_batch, Determined's loop)."""
    torch.manual_seed(0)
    with pytorch.init(hparams=hparams, enable_tensorboard_logging=False) as context:
        trial = _TimedTrial(context, data_dir=data_dir, cache_dir=cache_dir)
        pytorch.Trainer(trial, context).fit(
            max_length=pytorch.Batch(warmup + steps + 1), reporting_period=pytorch.Batch([warmup, warmup + steps]),
            checkpoint_policy="all",
        )
    first, second = trial.timer.ends
    return (second - first) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps with the cache")
    parser.add_argument("--uncached-steps", type=int, default=4, help="timed steps of the per-pair network")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--test-images", type=int, default=REAL_TRAIN_IMAGES,
                        help="test images of the real dataset, for the projection (default: as many as training)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = sample_set.write_sample_dataset(Path(tmp) / "sample", seed=0, rooms={"Training Data": 6, "Test Data": 1})
        cache = Path(tmp) / "cache"
        # Stopping writes a checkpoint of the working directory: keep both in the temporary folder.
        os.environ["XDG_DATA_HOME"] = str(Path(tmp) / "xdg")
        (Path(tmp) / "cwd").mkdir()
        os.chdir(Path(tmp) / "cwd")
        images = pair_dataset.DuplicateImageDataset(root / "Training Data", progress=False).images
        torch.manual_seed(0)
        extractor = SiameseNetwork(backbone_weights="none").features  # the trials' backbone (same seed)
        start = time.perf_counter()
        extract_features(extractor, images, progress=False, cache_dir=cache)  # the cached trial reads this file
        per_image = (time.perf_counter() - start) / len(images)
        results = {
            cached: time_training({**HPARAMS, "feature_cache": cached}, root, cache,
                                  args.warmup, args.steps if cached else args.uncached_steps)
            for cached in (True, False)
        }
        os.chdir(Path(__file__).resolve().parent)

    cached_rate, uncached_rate = BATCH / results[True], BATCH / results[False]
    ratio = cached_rate / uncached_rate
    extraction = per_image * (REAL_TRAIN_IMAGES + args.test_images)
    epoch = results[True] * -(-REAL_PAIRS // BATCH)
    print(f"CPU, {torch.get_num_threads()} threads, mobilenet_v3_large (random weights), batch {BATCH}")
    print(f"feature extraction (once per image, 8 variants): {per_image:.3f} s/image ({len(images)} images)")
    print(f"cached   (feature_cache true):  {cached_rate:8.1f} pairs/s  ({1000 * results[True]:.1f} ms/step)")
    print(f"per-pair (feature_cache false): {uncached_rate:8.1f} pairs/s  ({results[False]:.2f} s/step)")
    print(f"speed-up: {ratio:.1f}x (target >= {TARGET:.0f}x): {'PASS' if ratio >= TARGET else 'FAIL'}")
    print(f"real-size epoch with the cache: extraction of {REAL_TRAIN_IMAGES} + {args.test_images} images "
          f"{extraction / 60:.1f} min (once) + {-(-REAL_PAIRS // BATCH):,} steps {epoch / 60:.1f} min "
          f"= {(extraction + epoch) / 60:.1f} min (later epochs {epoch / 60:.1f} min)")
    print(f"real-size epoch without the cache: {REAL_PAIRS / uncached_rate / 3600:.1f} h")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
