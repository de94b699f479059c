"""A virtualenv shaped like a Determined task image, built in seconds from the running environment.

Before startup-hook.sh runs, a Determined image (determinedai/pytorch-ngc) already holds torch, torchvision and
the packages the Determined harness needs, in the site-packages of its one Python. Copying torch into a fresh
virtualenv would cost 5 GB and about a minute. Instead the fresh venv sees the running environment's
distributions of those packages through a .pth file that names a folder of symlinks (the "image's
site-packages"). Python imports them, pip lists them as installed, and pip never uninstalls them: they lie
outside the venv, so anything pip would replace is installed into the venv's own site-packages, ahead of them
on sys.path, and a test that compares torch's version and file before and after sees it.

Used by tests/test_startup_hook.py and tests/lower_bounds.py.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What a Determined PyTorch image provides: the framework and the harness (whose dependencies the image
# installs; pytorch-ngc installs `determined` and keeps its dependencies).
PROVIDED = ("torch", "torchvision", "determined")


def closure(roots: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, metadata.Distribution]:
    """The installed distributions `roots` need, transitively (markers evaluated here).

    A requirement's extras are followed (torch needs `cuda-toolkit[cublas,...]`, whose extras name the CUDA
    libraries; an image holds them, so pip must find them installed). A name in `exclude` is left out together
    with what only it needs.
    """
    skip = {canonicalize_name(n) for n in exclude}
    found: dict[str, metadata.Distribution] = {}
    followed: set[tuple[str, str]] = set()  # (distribution, extra) pairs already expanded; "" is no extra
    stack = [(canonicalize_name(n), "") for n in roots]
    while stack:
        name, extra = stack.pop()
        if (name, extra) in followed or name in skip:
            continue
        followed.add((name, extra))
        if name not in found:
            try:
                found[name] = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue  # an optional dependency this environment does not have
        for spec in found[name].requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                stack += [(canonicalize_name(req.name), e) for e in ("", *sorted(req.extras))]
    return found


def _top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The names a distribution occupies directly in site-packages (packages, modules, its .dist-info)."""
    if dist.files is None:
        raise RuntimeError(f"{dist.metadata['Name']} has no RECORD; cannot tell which files are its own")
    entries = {f.parts[0] for f in dist.files if f.parts and f.parts[0] not in ("..", "__pycache__")}
    return {e for e in entries if not e.endswith(".pth")}


def build(root: Path, provided: Iterable[str] = PROVIDED, exclude: Iterable[str] = ()) -> Path:
    """Create `root/venv` (with pip) that sees `provided` and their dependencies as the image's packages.

    Returns the venv's python. The symlinks live in `root/image-site-packages`; nothing of the running
    environment is written to.
    """
    shelf = root / "image-site-packages"
    shelf.mkdir(parents=True)
    for dist in closure(provided, exclude).values():
        site = Path(dist.locate_file(""))
        for entry in _top_level_entries(dist):
            link = shelf / entry
            if not link.exists():  # namespace folders (nvidia/, google/) are shared by several distributions
                link.symlink_to(site / entry)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_determined_image.pth").write_text(f"{shelf}\n")
    return python



def index_unreachable() -> str | None:
    """Why pip's package index cannot be reached at all, or None when it answers (a skip reason for tests)."""
    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                capture_output=True, text=True)
    url = (os.environ.get("PIP_INDEX_URL") or configured.stdout.strip() or "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/numpy/", timeout=15) as response:
            response.read(1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return f"package index unreachable ({url}: {exc})"
    return None
