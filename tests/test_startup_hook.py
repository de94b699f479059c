"""startup-hook.sh in a fresh virtualenv shaped like a Determined task image (see image_env.py).

The venv starts with torch, torchvision and the Determined harness's packages, and none of the trial's other
requirements. The hook must install requirements.txt into it, leave torch, torchvision and numpy exactly as
they were, and leave a Python in which `import model_def` works. It needs PyPI (or the machine's package
mirror), as a cluster does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import image_env
import pytest

pytestmark = pytest.mark.slow  # trains, runs several processes or installs packages

REPO = Path(__file__).resolve().parent.parent

# Printed by the venv's python: where torch, torchvision and numpy come from, and which requirements of
# requirements.txt the venv does not satisfy (name, installed version or None, specifier).
PROBE = r"""
import importlib.metadata as md, json, sys
from packaging.requirements import Requirement
import numpy, torch, torchvision
missing = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        version = None
    if version is None or not req.specifier.contains(version, prereleases=True):
        missing.append([req.name, version, str(req.specifier)])
print(json.dumps({"torch": [torch.__version__, torch.__file__],
                  "torchvision": [torchvision.__version__, torchvision.__file__],
                  "numpy": [numpy.__version__, numpy.__file__], "unmet": missing}))
"""


# What Determined's task entrypoint does with the hook: `set -e`, then source it from the model folder.
ENTRYPOINT = """set -e
test -f startup-hook.sh && source startup-hook.sh
echo "entrypoint continues in $PWD nounset=$(set -o | awk '$1=="nounset"{print $2}') \
pipefail=$(set -o | awk '$1=="pipefail"{print $2}')"
"""


def test_a_failing_install_stops_the_task_and_leaves_its_shell_alone(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(REPO / "startup-hook.sh", model_dir)
    (model_dir / "requirements.txt").write_text("numpy\n")
    bin_dir = tmp_path / "bin"  # a python3 whose `pip install` fails, as with an unreachable index
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\n[ "$3" = install ] && exit 1\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    hook = subprocess.run(["bash", "-c", ENTRYPOINT], capture_output=True, text=True, env=env, cwd=model_dir,
                          timeout=120)
    assert hook.returncode != 0
    assert "entrypoint continues" not in hook.stdout  # set -e stopped the task at the failed hook
    assert "startup-hook.sh: installing requirements.txt failed" in hook.stderr


def _probe(python: Path) -> dict:
    result = subprocess.run([str(python), "-c", PROBE, str(REPO / "requirements.txt")], capture_output=True,
                            text=True, cwd=REPO, check=True)
    return json.loads(result.stdout)


def test_startup_hook_installs_the_trial_requirements_and_keeps_the_images_torch(tmp_path: Path) -> None:
    if reason := image_env.index_unreachable():
        pytest.skip(reason)
    python = image_env.build(tmp_path)
    before = _probe(python)
    assert before["unmet"], "the image venv should start without the trial's requirements"
    unmet_names = {name.lower() for name, _, _ in before["unmet"]}
    assert {"imagehash", "scikit-learn", "faiss-cpu"} <= unmet_names

    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    hook = subprocess.run(["bash", "-c", ENTRYPOINT], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert hook.returncode == 0, hook.stdout + hook.stderr
    # The task's shell goes on in the model folder with its own options (no nounset / pipefail from the hook).
    assert hook.stdout.splitlines()[-1] == f"entrypoint continues in {REPO} nounset=off pipefail=off"
    kept = next(line for line in hook.stderr.splitlines() if line.startswith("startup-hook.sh: keeping the image's"))
    for name in ("torch", "torchvision", "numpy"):
        assert f" {name}==" in kept, kept

    after = _probe(python)
    assert after["unmet"] == []
    for name in ("torch", "torchvision", "numpy"):  # same version, same files: nothing was replaced or shadowed
        assert after[name] == before[name], name
        assert Path(after[name][1]).is_relative_to(tmp_path / "image-site-packages"), after[name]

    imported = subprocess.run([str(python), "-c", "import model_def, find_duplicates, model_inference; print('ok')"],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "ok"
    shutil.rmtree(tmp_path / "venv")  # ~0.3 GB of installed packages; pytest keeps the last runs' tmp dirs
