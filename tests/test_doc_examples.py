"""Every docstring example of the samespace package runs and shows what it prints."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import samespace

MODULES = sorted(m.name for m in pkgutil.walk_packages(samespace.__path__, "samespace.")
                 if m.name != "samespace.__main__")  # __main__ runs the command line when imported


def test_the_package_has_examples() -> None:
    examples = sum(len(t.examples) for name in MODULES
                   for t in doctest.DocTestFinder().find(importlib.import_module(name)))
    assert examples >= 20


@pytest.mark.parametrize("name", MODULES)
def test_examples_hold(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False,
                             report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (printed above)"
