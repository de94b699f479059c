"""Run the test suite with every trial requirement at the lower bound of its range in requirements.txt.

    python tests/lower_bounds.py [WORK_DIR] [-- PYTEST_ARGS...]

Builds a throwaway virtualenv (tests/image_env.py: torch, torchvision and the Determined harness come from the
running environment, as from a task image), installs each requirement at exactly its lower bound plus the test
tools, prints the versions it got, and runs pytest there, all but the two tests that need the package index.
Takes a few minutes and about 0.5 GB in WORK_DIR, which it deletes unless --keep is given. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import image_env
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
TEST_TOOLS = ("pytest", "jsonschema", "referencing")  # pinned as in requirements-dev.txt
NEEDS_INDEX = ("tests/test_requirements.py", "tests/test_startup_hook.py")


def lower_bounds(path: Path) -> list[str]:
    """`name==lowest` for every requirement of a requirements file (its >= or == version)."""
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        lowest = [s.version for s in req.specifier if s.operator in (">=", "==")]
        if len(lowest) != 1:
            raise SystemExit(f"{path}: {line!r} has no single lower bound")
        pins.append(f"{req.name}=={lowest[0]}")
    return pins


def dev_pins(names: tuple[str, ...]) -> list[str]:
    wanted = {canonicalize_name(n) for n in names}
    lines = (line.split("#")[0].strip() for line in (REPO / "requirements-dev.txt").read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")
            and canonicalize_name(Requirement(line).name) in wanted]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path, help="folder for the venv (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the venv")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="samespace-lower-bounds-"))
    pins = lower_bounds(REPO / "requirements.txt")
    try:
        # The image provides torch, torchvision and the harness, but none of the trial's own requirements.
        ours = [Requirement(p).name for p in pins]
        python = image_env.build(work, exclude=ours)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins, *dev_pins(TEST_TOOLS)], check=True)
        listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], check=True,
                                capture_output=True, text=True).stdout.splitlines()
        names = {canonicalize_name(p.split("==")[0]) for p in pins} | {"torch", "torchvision"}
        print("lower-bound environment:", " ".join(x for x in listed if canonicalize_name(x.split("==")[0]) in names))
        deselect = [arg for path in NEEDS_INDEX for arg in ("--ignore", path)]
        return subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *deselect,
                               *args.pytest_args], cwd=REPO).returncode
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
