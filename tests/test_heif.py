"""HEIF / HEIC photos (phones' default format) through the optional pillow-heif plugin: decoded upright like a
JPEG, found, shown and kept like one; damaged ones skipped; without the plugin, skipped with what installs it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace import decoding, image_formats, keepers, labelling, photo_files, report, store_identity, tiers
from samespace.commands import find

pytest.importorskip("pillow_heif")

REPO = Path(__file__).resolve().parent.parent


def _heic(image: Image.Image, orientation: int = 1, quality: int = 90) -> bytes:
    """The photo saved as HEIC; with an EXIF orientation, pillow-heif stores it as the file's rotation."""
    assert image_formats.enable_heif()
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "HEIF", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(test_dir: Path) -> list[Path]:
    """Two sample photos of different rooms."""
    paths = labelling.find_images(test_dir)
    groups = labelling.group_ids(paths, test_dir)
    return [paths[0], next(p for p, g in zip(paths, groups, strict=True) if g != groups[0])]


def test_a_heic_photo_decodes_as_its_jpeg_does(photos: list[Path]) -> None:
    jpeg, aspect = decoding.decode_image(photos[0])
    with Image.open(photos[0]) as img:
        heic = _heic(img.convert("RGB"))
    assert heic[4:12] == b"ftypheic"
    pixels, heic_aspect = decoding.decode_image("IMG_0001.HEIC", content=heic)
    assert pixels.shape == jpeg.shape == (decoding.IMAGE_SIZE, decoding.IMAGE_SIZE, 3)
    assert heic_aspect == pytest.approx(aspect)
    assert np.abs(pixels.astype(np.int16) - jpeg).mean() < 2.0  # HEVC at quality 90 against the JPEG's pixels


def test_a_turned_heic_comes_out_upright_once(photos: list[Path], tmp_path: Path) -> None:
    upright, aspect = decoding.decode_image(photos[0])
    with Image.open(photos[0]) as img:
        width, height = img.size
        turned = _heic(img.convert("RGB").transpose(Image.Transpose.ROTATE_90), orientation=6)
    pixels, turned_aspect = decoding.decode_image("turned.heic", content=turned)
    assert turned_aspect == pytest.approx(aspect)
    assert np.abs(pixels.astype(np.int16) - upright).mean() < 2.0
    path = tmp_path / "turned.heic"
    path.write_bytes(turned)
    facts = keepers.read_facts(path)  # the keeper rule compares upright resolutions
    assert (facts.width, facts.height) == (width, height)
    assert report.thumbnail_uri(path).startswith("data:image/jpeg;base64,")


def test_find_groups_a_heic_copy_with_its_jpeg(photos: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in photos:
        (folder / path.name).write_bytes(path.read_bytes())
    with Image.open(photos[0]) as img:
        (folder / "IMG_0001.HEIC").write_bytes(_heic(img.convert("RGB")))
    out = tmp_path / "dups.json"
    assert find.main([str(folder), "--json", str(out), "--no-cache", "--no-progress"]) == 0
    capsys.readouterr()
    document = json.loads(out.read_text())
    assert document["skipped"] == []
    assert document["summary"]["images"] == 3
    assert [sorted(Path(m).name for m in g["members"]) for g in document["groups"]] == [
        sorted(["IMG_0001.HEIC", photos[0].name])]
    assert [pair[3] for pair in document["groups"][0]["pairs"]] == [tiers.SAME_PHOTO]


def test_damaged_heic_files_are_skipped_with_a_reason(photos: list[Path]) -> None:
    """Seeded bit flips, truncations and overwritten header bytes: each file decodes or is one UnreadableImageError
    naming it (libheif's own errors included); none crashes the process."""
    with Image.open(photos[1]) as img:
        base = _heic(img.convert("RGB"), orientation=6, quality=60)
    rng = np.random.default_rng(3)
    outcomes = {"decoded": 0, "skipped": 0}
    for k in range(90):
        data = bytearray(base)
        if k % 3 == 0:
            for _ in range(int(rng.integers(1, 9))):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        elif k % 3 == 1:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 30))):
                data[int(rng.integers(0, 600))] = int(rng.integers(0, 256))
        try:
            pixels, _ = decoding.decode_image(f"damaged_{k}.heic", content=bytes(data))
        except decoding.UnreadableImageError as exc:
            assert str(exc).startswith(f"damaged_{k}.heic: cannot read image (")
            outcomes["skipped"] += 1
        else:
            assert pixels.shape == (decoding.IMAGE_SIZE, decoding.IMAGE_SIZE, 3)
            outcomes["decoded"] += 1
    assert outcomes["decoded"] >= 10 and outcomes["skipped"] >= 30  # both kinds of outcome were exercised


WITHOUT_PLUGIN = """
import json, sys
sys.modules["pillow_heif"] = None  # as if pillow-heif were not installed
from samespace import photo_files, store_identity
skipped = []
found = photo_files.image_files([sys.argv[1]], skipped)
print(json.dumps({"found": [p.name for p in found], "skipped": skipped, "identity": store_identity.decode_identity()}))
"""


def test_without_the_plugin_a_heic_is_skipped_with_what_installs_it(photos: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / photos[0].name).write_bytes(photos[0].read_bytes())
    with Image.open(photos[0]) as img:
        (folder / "IMG_0001.HEIC").write_bytes(_heic(img.convert("RGB")))
    done = subprocess.run([sys.executable, "-c", WITHOUT_PLUGIN, str(folder)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["found"] == [photos[0].name]
    assert result["skipped"] == [{"path": str(folder / "IMG_0001.HEIC"),
                                  "reason": "no decoder for .heic installed (pip install 'samespace[heif]')"}]
    # With the plugin, its version is part of the decoder's identity: stores made without it are rebuilt once.
    assert result["identity"] != store_identity.decode_identity()
    assert ".heic" in photo_files.readable_extensions()
