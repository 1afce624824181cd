"""The public surface: what ``harnpool`` exports."""

from __future__ import annotations

import inspect

import harnpool
from harnpool import _errors


def test_all_is_sorted() -> None:
    assert harnpool.__all__ == sorted(harnpool.__all__)


def test_every_exported_name_resolves() -> None:
    for name in harnpool.__all__:
        assert getattr(harnpool, name) is not None, name


def test_exported_objects_claim_the_package() -> None:
    # Users import from harnpool; reprs and docs should say so, not a private module.
    for name in harnpool.__all__:
        obj = getattr(harnpool, name)
        if isinstance(obj, type) or inspect.isfunction(obj):
            assert obj.__module__ == "harnpool", name


def test_every_error_derives_from_the_base() -> None:
    for name in _errors.__all__:
        assert issubclass(getattr(_errors, name), harnpool.HarnpoolError), name


def test_error_tree_is_drawn_in_the_docstring() -> None:
    doc = _errors.__doc__ or ""
    for name in _errors.__all__:
        assert name in doc, f"{name} is missing from the tree in _errors' docstring"
