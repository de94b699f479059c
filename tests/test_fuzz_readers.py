"""Every reader decodes or skips the same damaged files with the same reason.

A few hundred mutated JPEG / PNG files (seeded bit flips, truncations, corrupt EXIF) are read by `data.py stats`,
the training dataset, evaluation.evaluate and find_duplicates; none may raise, and all four must agree on
which files decode and why each other file is skipped (they share decoding.load_image).
"""

from __future__ import annotations

import io
import re
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from samespace import evaluation, finder, labelling, pair_dataset, scorers

N_FILES = 240


def _with_exif(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate, so exif_transpose parses the block
    exif[0x010F] = "Camera"
    exif[0x0110] = "Model X"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, exif=exif.tobytes())
    return buffer.getvalue()


def _mutate(base: bytes, kind: str, rng: np.random.Generator) -> bytes:
    out = bytearray(base)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(0, len(out)))
            out[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        out = out[: int(rng.integers(0, len(out)))]
    else:  # corrupt EXIF: random bytes in the IFD entries (tag ids, types, counts, offsets)
        start = base.index(b"Exif\x00\x00") + 6
        for _ in range(int(rng.integers(1, 4))):
            out[start + int(rng.integers(8, 50))] = int(rng.integers(0, 256))
    return bytes(out)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, test_dir: Path) -> Path:
    """A split folder of N_FILES mutated photos named <city>_<room>_<n> (rooms of four), plus intact copies."""
    root = tmp_path_factory.mktemp("fuzz") / "split"
    (root / "room").mkdir(parents=True)
    rng = np.random.default_rng(8)
    sources = labelling.find_images(test_dir)[:3]
    bases = []
    for path in sources:
        with Image.open(path) as img:
            img.load()
            bases.append(("jpg", _with_exif(img)))
            buffer = io.BytesIO()
            img.save(buffer, "PNG")
            bases.append(("png", buffer.getvalue()))
    # the one struct.error seen in real files: EXIF tag Make retyped, so PIL packs text as an integer
    crafted = bases[0][1].replace(b"\x01\x0f\x00\x02", b"\x01\x03\x00\x02", 1)
    (root / "room" / "crafted_0_1.jpg").write_bytes(crafted)
    for k in range(N_FILES):
        ext, base = bases[k % len(bases)]
        kind = ("flip", "truncate", "exif")[k % 3] if ext == "jpg" else ("flip", "truncate")[k % 2]
        (root / "room" / f"fuzz_{k // 4}_{k % 4}.{ext}").write_bytes(_mutate(base, kind, rng))
    for k, (ext, base) in enumerate(bases):  # intact: the split always has duplicate pairs to count
        (root / "room" / f"intact_0_{k}.{ext}").write_bytes(base)
        (root / "room" / f"intact_1_{k}.{ext}").write_bytes(base)
    return root


def _split(message: str, root: Path) -> tuple[str, str]:
    path, _, reason = message.partition(": ")
    return Path(path).relative_to(root).as_posix(), reason


class _TinyExtractor(torch.nn.Module):
    """A stand-in backbone (channel means): model_inference's decoding is what is under test, not features."""

    backbone = "tiny"
    out_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def test_every_reader_decodes_or_skips_the_same_files_for_the_same_reason(fuzzed: Path, capsys) -> None:
    files = sorted(p.relative_to(fuzzed).as_posix() for p in labelling.find_images(fuzzed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # 1. data.py stats
        assert data.main(["stats", str(fuzzed)]) == 0
        lines = capsys.readouterr().out.splitlines()
        stats_skipped = dict(_split(line.removeprefix("skipped: "), fuzzed) for line in lines
                             if line.startswith("skipped: "))
        # 2. the training dataset
        dataset = pair_dataset.DuplicateImageDataset(fuzzed, progress=False, augment_negatives=True)
        train_kept = {p.relative_to(fuzzed).as_posix() for p in dataset.paths}
        train_skipped = dict(_split(m, fuzzed) for m in dataset.skipped)
        # 3. model_inference
        model = types.SimpleNamespace(features=_TinyExtractor())
        report, unique = evaluation.evaluate(model, fuzzed, pairing="unique", methods=["whash"], progress=False)
        eval_kept = {p.relative_to(fuzzed).as_posix() for p in unique["paths"]}
        eval_skipped = dict(_split(m, fuzzed) for m in report["skipped"])
        # 4. find_duplicates
        result = finder.find_duplicates([fuzzed], scorers.HashScorer("whash"), 0.95, progress=False)
        find_kept = {Path(p).relative_to(fuzzed).as_posix() for p in result.paths}
        find_skipped = {Path(s["path"]).relative_to(fuzzed).as_posix(): s["reason"] for s in result.skipped}

    assert train_kept == eval_kept == find_kept
    assert stats_skipped == train_skipped == eval_skipped == find_skipped
    assert sorted(train_kept | set(train_skipped)) == files  # every file either decoded or skipped
    assert report["images"] == len(eval_kept) and dataset.summary()["skipped"] == len(train_skipped)

    # the mutations really exercise both outcomes, including that EXIF failure
    assert 30 < len(train_skipped) < len(files) - 30
    assert re.search(r"cannot read image \(error: ", train_skipped["room/crafted_0_1.jpg"])
    kinds = {"truncate", "flip"}
    for name in train_skipped:
        k = int(name.split("_")[1]) * 4 + int(name.split("_")[2].split(".")[0]) if name.startswith("room/fuzz") else -1
        if k >= 0 and name.endswith(".jpg"):
            kinds.discard(("flip", "truncate", "exif")[k % 3])
    assert not kinds  # both bit flips and truncations made unreadable JPEGs
