"""The command lines' short messages: Ctrl-C is one line and exit 130 (SIGTERM 143, the root scripts too), a bad
number names its option."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_actions import write_scene

from samespace import cli, outputs, report, scorer_choice, scoring_methods
from samespace.commands import find

REPO = Path(__file__).resolve().parent.parent


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_ctrl_c_is_one_line_and_exit_130(command: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    module = pytest.importorskip(cli.COMMANDS[command][0])
    monkeypatch.setattr(module, "main", _interrupt)
    assert cli.main([command, "x"]) == cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr() == ("", "interrupted\n")


# Runs a root script as `python SCRIPT ARGS` does, after making the finder's second stored batch send SIGTERM.
KILLED_AT_THE_SECOND_BATCH = """
import os, runpy, signal, sys
from samespace import run_memory
batches = []
def then_kill(store):
    batches.append(1)
    if len(batches) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
run_memory.save_early = then_kill
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", ["find_duplicates.py", "embed.py"])
def test_a_root_script_stopped_by_sigterm_keeps_its_rows_and_says_one_line(script: str, tmp_path: Path) -> None:
    photos, store = tmp_path / "photos", tmp_path / "store.npz"
    write_scene(photos)
    run = subprocess.run([sys.executable, "-c", KILLED_AT_THE_SECOND_BATCH, str(REPO / script), str(photos),
                          "--method", "phash", "--batch-size", "2", "--store", str(store)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == cli.EXIT_TERMINATED, run.stderr
    assert run.stderr.splitlines()[-2:] == [f"kept 4 embeddings in {store}: the next run goes on from them",
                                            "terminated"]
    assert "Traceback" not in run.stderr


def test_ctrl_c_while_writing_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_scene(photos)
    out.mkdir()
    monkeypatch.setattr(report, "render_html", _interrupt)
    assert cli.main(["find", str(photos), "--method", "phash", "--no-progress", "--no-cache", "--html",
                     str(out / "r.html")]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert sorted(out.iterdir()) == []

    def half_then_interrupt(f: object) -> None:
        f.write(b"half a store")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    (out / "s.npz").write_bytes(b"before")
    with pytest.raises(KeyboardInterrupt):
        outputs.atomic_write(out / "s.npz", half_then_interrupt)
    assert [p.name for p in out.iterdir()] == ["s.npz"] and (out / "s.npz").read_bytes() == b"before"


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--top-k", "-2")])
def test_a_number_out_of_range_names_its_option(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        find.main(["photos", option, value])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {option} {value}: must be positive (see find_duplicates.py --help)\n"




def test_the_docs_and_help_name_what_the_command_line_takes(capsys: pytest.CaptureFixture[str]) -> None:
    readme, guide = (REPO / "README.md").read_text(), (REPO / "docs" / "finding-duplicates.md").read_text()
    choices = set(scoring_methods.REFERENCE_METHODS)
    assert set(re.search(r"\[--method ([a-z|]+)", readme).group(1).split("|")) == choices  # no `model`
    assert set(re.search(r"`--method ([a-z\\|]+)`", guide).group(1).split("\\|")) == choices
    assert scorer_choice.default_method() == "calibrated"
    assert "# default method: calibrated" in guide and 'method="relative"' not in guide
    for text in (readme, guide):
        assert "for a, b, score, tier in result.pairs" in text and "(path_a, path_b, score)" not in text
        assert "--method model" not in text and "without opening them" not in text
    assert "[[p1, p2,\nscore, tier], ...]" in readme and '"keys": [...]' in guide
    with pytest.raises(SystemExit):
        find.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "CSV (group,path1,path2,score,tier)" in help_text and "without opening" not in help_text
