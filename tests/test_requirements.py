"""requirements.txt installs on every Python the docs support on a cluster (docs/reproduction.md), on top of
the image's torch.

pip's own resolver decides, for a target Python and platform, without installing anything
(`pip install --dry-run --ignore-installed --python-version X --platform ...`). The image's torch is stood in
for by a metadata-only wheel of a version no index has, pinned by a constraint, as startup-hook.sh pins the
real one; on the default image's Python (3.10) the image's numpy is pinned too. Needs the package index: the
test skips only when the index cannot be reached at all, never when resolution fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import image_env
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow  # trains, runs several processes or installs packages

REPO = Path(__file__).resolve().parent.parent

# Python -> what the image fixes. 3.10: determinedai/pytorch-ngc:0.38.x (NGC PyTorch 24.03: torch 2.3.0a0,
# numpy 1.24.4). 3.11 and 3.12: a custom image, torch fixed, numpy free.
IMAGES = {"3.10": {"numpy": "1.24.4"}, "3.11": {}, "3.12": {}}
IMAGE_TORCH = "2.3.0+image"  # no index has it: only the stand-in wheel can satisfy the constraint
# The default image is Ubuntu 22.04 (glibc 2.35): every manylinux wheel up to manylinux_2_35 installs there.
# pip matches --platform tags literally, so the legacy aliases (manylinux1 = 2_5, 2010 = 2_12, 2014 = 2_17)
# are listed too: some wheels carry only those (kiwisolver's, for one).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(5, 36)] + [
    f"manylinux{alias}_x86_64" for alias in ("1", "2010", "2014")]


def _lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file, comments and options (-r) dropped, as written."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def _requirements(path: Path) -> list[Requirement]:
    return [Requirement(line) for line in _lines(path)]


def _stand_in_wheel(folder: Path, name: str, version: str) -> None:
    """A wheel with metadata only: what pip needs to treat `name==version` as available."""
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: samespace-tests\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


def _resolve(python: str, fixed: dict[str, str], work: Path) -> subprocess.CompletedProcess:
    constraints = work / f"image-{python}.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in {"torch": IMAGE_TORCH, **fixed}.items()))
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
               "--python-version", python, *platforms, "--find-links", str(work / "wheels"), "--quiet",
               "--report", str(work / f"report-{python}.json"), "-r", str(REPO / "requirements.txt"),
               "-c", str(constraints)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_requirements_resolve_on_every_supported_python(tmp_path: Path) -> None:
    if reason := image_env.index_unreachable():
        pytest.skip(reason)
    (tmp_path / "wheels").mkdir()
    _stand_in_wheel(tmp_path / "wheels", "torch", IMAGE_TORCH)
    with ThreadPoolExecutor(len(IMAGES)) as pool:  # network-bound: the three resolutions overlap
        results = dict(zip(IMAGES, pool.map(lambda py: _resolve(py, IMAGES[py], tmp_path), IMAGES), strict=True))

    wanted = _requirements(REPO / "requirements.txt")
    for python, result in results.items():
        assert result.returncode == 0, f"Python {python}:\n{result.stderr[-3000:]}"
        report = json.loads((tmp_path / f"report-{python}.json").read_text())
        chosen = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                  for item in report["install"]}
        assert chosen["torch"] == IMAGE_TORCH, python  # the image's torch is kept, no other torch comes along
        assert not any(name.startswith("nvidia-") for name in chosen), python
        for name, version in IMAGES[python].items():
            assert chosen[name] == version, (python, name)
        for req in wanted:
            assert req.specifier.contains(chosen[canonicalize_name(req.name)], prereleases=True), (python, req)


def test_dev_pins_every_trial_requirement_inside_its_range() -> None:
    ranges = {canonicalize_name(r.name): r for r in _requirements(REPO / "requirements.txt")}
    pins = {canonicalize_name(r.name): r for r in _requirements(REPO / "requirements-dev.txt")}
    for name, req in ranges.items():
        pin = pins.get(name, req)  # the two packages with one release are pinned in requirements.txt itself
        specs = list(pin.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{name} is not pinned exactly for development"
        assert req.specifier.contains(specs[0].version), f"{name}: dev pin {pin} is outside {req}"
    assert {"torch", "torchvision"} <= pins.keys()
    assert not {"torch", "torchvision"} & ranges.keys(), "the image brings torch; requirements.txt must not"


def test_the_docs_list_the_supported_pythons_and_every_range() -> None:
    readme = (REPO / "docs" / "reproduction.md").read_text()  # "Cluster images and requirements"
    assert "Supported on a cluster: Python 3.10, 3.11 and 3.12" in readme
    assert sorted(IMAGES) == ["3.10", "3.11", "3.12"]
    for line in _lines(REPO / "requirements.txt"):
        assert f"`{line}`" in readme, f"docs/reproduction.md does not show {line}"
