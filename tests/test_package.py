"""The installable package: the `samespace` command, the Python API, and the layout rules the code keeps.

Layout rules, checked on the source: no module over 500 lines, no private name (``_x``) of one module used by
another, no import of the root trial files from the package, and the duplicate finder never loading Determined.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra brings tomli, tomllib's origin, to Python 3.10
    import tomli as tomllib

import pytest

import samespace
from samespace import cli, tiers

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "samespace"
ROOT_TRIAL_FILES = ("model_def", "data", "model_inference", "model_download")
MAX_MODULE_LINES = 500


def _modules() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(REPO / f"{name}.py" for name in ROOT_TRIAL_FILES)])


def _run(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_no_module_is_over_500_lines() -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _modules()}
    assert len(sizes) > 40
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_private_name_is_used_across_modules() -> None:
    """``module._name`` never appears outside ``module`` (tests included): what another module needs is public."""
    own = {p.stem for p in _modules()}
    crossing = []
    for path in [*_modules(), *(REPO / "tests").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in own and node.value.id != path.stem):
                crossing.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert crossing == []


def test_the_package_never_imports_the_root_trial_files() -> None:
    """The package installs without the trial: model_def.py and the rest import it, never the other way."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ROOT_TRIAL_FILES]
    assert found == []


def _vermin(target: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    run_vermin = "import sys; from vermin import main; sys.exit(main())"  # vermin has no __main__ module
    return subprocess.run([sys.executable, "-c", run_vermin, f"--target={target}-", "--violations", "--no-tips",
                           *map(str, paths)], capture_output=True, text=True, timeout=300, check=False)


def test_the_shipped_code_runs_on_the_oldest_supported_python(tmp_path: Path) -> None:
    """The package and the root files use no syntax, module, member or argument newer than ``requires-python``:
    the suite runs on a later Python than a cluster image's (3.10), so only this reads them for it (vermin)."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    oldest = re.fullmatch(r">=(3\.\d+)", requires).group(1)
    assert oldest == "3.10"
    newer = tmp_path / "newer.py"  # the check itself finds what the oldest Python lacks
    newer.write_text("import tomllib\nfrom datetime import UTC\n")
    flagged = _vermin(oldest, newer)
    assert flagged.returncode != 0 and "'tomllib' module requires !2, 3.11" in flagged.stdout, flagged.stdout
    shipped = _vermin(oldest, PACKAGE, *REPO.glob("*.py"))
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert f"Minimum required versions: {oldest}" in shipped.stdout

def test_help_and_version_load_no_model_code() -> None:
    """`samespace --help` and every subcommand's --help run with torch and Determined unimportable."""
    code = ("import sys; sys.modules['torch'] = sys.modules['determined'] = None; from samespace.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n    sys.exit(exit.code)")
    for argv in (["--help"], *([name, "--help"] for name in cli.COMMANDS)):
        done = _run(code, *argv)
        assert done.returncode == 0, (argv, done.stderr)
        assert "usage: samespace" in done.stdout, argv
        assert "examples:\n  samespace" in done.stdout, argv
        assert argv == ["--help"] or "--debug" in done.stdout, argv
    version = _run(code, "--version")
    assert version.stdout.strip() == f"samespace {samespace.__version__}"


def test_an_unknown_command_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["deduplicate", "photos"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'deduplicate'" in err[0]


def test_version_matches_the_project_metadata() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == samespace.__version__
    assert project["scripts"] == {"samespace": "samespace.cli:main"}
    language = "Programming Language :: Python :: "
    pythons = {c.removeprefix(language) for c in project["classifiers"] if c.startswith(f"{language}3.")}
    assert pythons == {"3.10", "3.11", "3.12"}  # the supported ones (tests/test_requirements.py, docs/reproduction.md)
    assert set(project["optional-dependencies"]) == {"train", "heif", "dev"}
    assert any(r.startswith("determined") for r in project["optional-dependencies"]["train"])
    assert not any(r.startswith(("determined", "kaggle", "pytest")) for r in project["dependencies"])


def test_finding_duplicates_never_loads_determined(train_dir: Path, tmp_path: Path) -> None:
    """The finder, its store and the API run with Determined unimportable (pip install . does not bring it)."""
    code = ("import json, sys; sys.modules['determined'] = None\n"
            "import samespace\n"
            "found = samespace.find_duplicates([sys.argv[1]], method='phash', store=sys.argv[2])\n"
            "print(json.dumps({'groups': len(found.groups), 'pairs': len(found.pairs), 'first': found.pairs[0],\n"
            "                  'skipped': found.skipped, 'method': found.method}))")
    done = _run(code, str(train_dir), str(tmp_path / "store.npz"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout)
    assert result["method"] == "phash" and result["skipped"] == []
    assert result["groups"] > 5 and result["pairs"] >= result["groups"]
    assert 0.7344 <= result["first"][2] <= 1.0  # the best pair scores at least phash's default threshold
    assert (tmp_path / "store.npz").is_file()


def test_the_api_gives_paths_and_scores(train_dir: Path) -> None:
    found = samespace.find_duplicates(train_dir, method="whash", threshold=0.99)
    assert isinstance(found, samespace.Duplicates)
    assert found.threshold == 0.99 and found.method == "whash"
    assert all(s >= 0.99 and tier in tiers.TIERS for _, _, s, tier in found.pairs)
    assert [s for _, _, s, _ in found.pairs] == sorted((s for _, _, s, _ in found.pairs), reverse=True)
    members = {p for group in found.groups for p in group}
    assert members == {p for a, b, _, _ in found.pairs for p in (a, b)}
    assert all(Path(p).is_file() and Path(p).is_relative_to(train_dir) for p in members)
    with pytest.raises(samespace.FindDuplicatesError, match="not a directory"):
        samespace.find_duplicates([train_dir / "nowhere"])


def test_the_api_leaves_thumbnail_folders_out_unless_asked(tmp_path: Path, train_dir: Path) -> None:
    photo = next(p for p in sorted(train_dir.rglob("*.jpg")))
    shutil.copy(photo, tmp_path / "room.jpg")
    (tmp_path / "@eaDir").mkdir()
    shutil.copy(photo, tmp_path / "@eaDir" / "SYNOFILE_THUMB_M.jpg")  # a NAS's thumbnail of the photo
    assert samespace.find_duplicates(tmp_path, method="whash").groups == []
    found = samespace.find_duplicates(tmp_path, method="whash", include_hidden=True)
    assert [sorted(Path(p).name for p in g) for g in found.groups] == [["SYNOFILE_THUMB_M.jpg", "room.jpg"]]


def test_the_readme_is_short_and_no_text_names_an_issue_or_a_work_period() -> None:
    """History lives in git: project text describes the project as it is."""
    assert (REPO / "README.md").stat().st_size <= 20_000
    pattern = re.compile(r"\bissues? #?\d+|\bwork periods?\b|\bsessions? \d+", re.IGNORECASE)
    texts = []
    for parent, folders, files in os.walk(REPO):  # the project's own text: no data, outputs or virtualenv of any name
        folders[:] = [f for f in folders if f not in {".git", "data", "checkpoints"}
                      and not os.path.exists(os.path.join(parent, f, "pyvenv.cfg"))]
        texts += [Path(parent, f) for f in files if Path(f).suffix in {".py", ".md", ".yaml", ".toml", ".sh", ".txt"}]
    assert len(texts) > 60
    assert [f"{p.relative_to(REPO)}: {m.group(0)}" for p in texts for m in pattern.finditer(p.read_text())] == []


@pytest.mark.slow  # builds and installs the package
def test_the_built_wheel_holds_every_module_and_data_file_and_finds_duplicates(train_dir: Path,
                                                                              tmp_path: Path) -> None:
    """What `pip install .` installs (not the editable checkout): every module and data file of the package, and
    the default method, whose fitted weights and background are data files, runs from it outside the checkout."""
    source, wheels, target = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    source.mkdir()  # a copy: the build writes build/ and *.egg-info beside its sources, and would reuse them
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / "samespace", ignore=shutil.ignore_patterns("__pycache__"))
    # The test environment's setuptools when it has one (no download); else pip fetches the build backend
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
                            "--wheel-dir", str(wheels), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("samespace-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("samespace/")}
    expected = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert expected == shipped, (expected ^ shipped)
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    photos = tmp_path / "photos"
    photos.mkdir()
    first = sorted(train_dir.rglob("*.jpg"))[0]
    shutil.copy(first, photos / "a.jpg")
    shutil.copy(first, photos / "b.jpg")
    code = ("import sys, samespace\n"
            "found = samespace.find_duplicates([sys.argv[1]])\n"
            "print(samespace.__file__, found.method, [sorted(g) for g in found.groups])")
    done = subprocess.run([sys.executable, "-c", code, str(photos)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin",
                                            "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(" ", 2) == [str(target / "samespace" / "__init__.py"), "calibrated",
                                         f"{[[str(photos / 'a.jpg'), str(photos / 'b.jpg')]]}\n"]
