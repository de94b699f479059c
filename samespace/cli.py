"""What every SameSpace command line shares: an argument parser whose errors are one line.

argparse prints the usage (several lines for a command with many options) before its error; a user who gave a
bad value needs only the line naming it. ``--help`` still shows the full usage.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from samespace import interrupts

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped by kill, timeout or a container stopping


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are ``error: <message> (see <prog> --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


@contextlib.contextmanager
def clean_warnings() -> Iterator[None]:
    """Print each warning as one ``warning: <message>`` line on stderr (no ``file:line: UserWarning:``).

    The command lines wrap their run in this, so a skipped file or an unparsed name reads like an error does.
    Only the formatting changes (warnings.formatwarning), so filters and recording (pytest.warns) still apply.
    """
    previous = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' API
        return "warning: " + str(message).replace("\n", "\\n") + "\n"  # one line, even for a name with a newline

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = previous


def run_reporting_errors(run: Callable[[], object], errors: tuple[type[BaseException], ...], debug: bool) -> int:
    """Run a command's work: an expected error is one ``error: ...`` line on stderr and exit status 2 (``--debug``:
    the traceback instead); warnings are one ``warning:`` line each (:func:`clean_warnings`)."""
    try:
        with clean_warnings():
            run()
    except errors as exc:
        if debug:
            raise
        print(f"error: {exc}".replace("\n", "\\n"), file=sys.stderr)  # one line, even for a name with a newline
        return EXIT_ERROR
    return 0


# The subcommands of `samespace`: (module, summary, leading arguments given to the module's main). A module is
# imported only when its subcommand runs, so `samespace --help` loads no model code.
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "find": ("samespace.commands.find", "find duplicate photos of the same space in folders", ()),
    "embed": ("samespace.commands.embed", "embed photos into a store (one shard of a job per process)", ()),
    "evaluate": ("samespace.commands.evaluate", "evaluate a checkpoint and the reference methods on a split", ()),
    "calibrate": ("samespace.threshold_calibration", "reproduce the default thresholds", ("calibrate",)),
    "sample": ("samespace.commands.dataset", "write the generated sample set", ("sample",)),
    "stats": ("samespace.commands.dataset", "count the images, groups and pairs of a split", ("stats",)),
    "download": ("samespace.commands.dataset", "download the Kaggle dataset (needs Kaggle credentials)", ("download",)),
    "devset": ("samespace.devsets.real_photos", "build or verify the real-photo development set", ()),
    "act": ("samespace.commands.act", "keep one photo per group of a find result; move, trash or link the rest", ()),
    "undo": ("samespace.commands.undo", "put back the files an applied act moved, trashed or replaced", ()),
}

EXAMPLES = """examples:
  samespace find ~/Pictures/listing --html report.html     # duplicates in a folder, as a page with thumbnails
  samespace find new/ --against library/ --json new.json   # new photos that duplicate a library's
  samespace find photos/ --method cosine --threshold 0.9   # another method, a stricter threshold
  samespace sample data/sample                             # a generated set to try things on
  samespace evaluate --checkpoint checkpoints/<id> --data-dir "data/sample/Test Data"

`samespace COMMAND --help` shows a command's options.
"""


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """``1 group``, ``1,234 groups``: a count with thousands separators and its noun, plural unless the count is
    one.

    >>> counted(1, "duplicate pair"), counted(4560, "pair"), counted(1, "of them a copy", "of them copies")
    ('1 duplicate pair', '4,560 pairs', '1 of them a copy')
    """
    return f"{number:,} {singular if number == 1 else (plural or singular + 's')}"


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (else the usual one-line usage error naming the value)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def add_decode_options(parser: argparse.ArgumentParser) -> None:
    """--workers and --decode-pool: how many threads or processes decode photos beside the model."""
    from samespace import batch_decoding

    parser.add_argument(
        "--workers", type=positive_int, metavar="N",
        help=f"photos decoded by N workers at once (default: one per core here, {batch_decoding.default_workers()})")
    parser.add_argument(
        "--decode-pool", choices=batch_decoding.POOLS, default=batch_decoding.DEFAULT_POOL,
        help=f"decode in worker threads or processes (default: {batch_decoding.DEFAULT_POOL}, the faster measured)")


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """--precision: the backbone's arithmetic (samespace.backbones)."""
    from samespace import scoring_methods

    parser.add_argument(
        "--precision", choices=scoring_methods.PRECISIONS, default="fp32",
        help="the backbone's arithmetic (default: fp32, the same features on every device; bf16 is about twice as "
             "fast on a CPU with AVX512-BF16, AP within 0.002; fp16 keeps AP within 0.001 and is fast on GPUs only)")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``samespace`` command: dispatch to a subcommand's ``main``; its exit status."""
    import importlib

    from samespace import __version__

    args = list(sys.argv[1:] if argv is None else argv)
    listing = "\n".join(f"  {name:<10} {summary}" for name, (_, summary, _) in COMMANDS.items())
    parser = ArgumentParser(
        prog="samespace",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Find photos of the same space (re-shot, cropped, edited).\n\ncommands:\n{listing}",
    )
    parser.add_argument("--version", action="version", version=f"samespace {__version__}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands above")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's arguments")
    if not args or args[0] in ("-h", "--help", "--version") or args[0] not in COMMANDS:
        parser.parse_args(args[:1] or ["--help"])  # prints the help, the version or the error, and exits
    name, rest = args[0], args[1:]
    module_name, _, leading = COMMANDS[name]

    def run() -> int:
        module = importlib.import_module(module_name)
        return module.main([*leading, *rest], prog=f"samespace {name}" if not leading else "samespace")

    return run_stoppably(run)


def run_stoppably(run: Callable[[], int]) -> int:
    """Run a command's main (a ``samespace`` command or a root script): Ctrl-C is one ``interrupted`` line and exit
    status 130, SIGTERM one ``terminated`` line and 143, each after the command's own cleanup, not a traceback."""
    terminated = False
    try:
        with interrupts.terminate_as_interrupt():
            return run()
    except KeyboardInterrupt as exc:  # Ctrl-C or kill: one line, not a traceback; atomic_write removed its temporary
        terminated = isinstance(exc, interrupts.Terminated)
    # After the except block, which held the frames: a progress bar in them has closed its line by now.
    print("terminated" if terminated else "interrupted", file=sys.stderr)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
