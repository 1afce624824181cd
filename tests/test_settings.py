"""Settings and task options: what a checked value becomes."""

from __future__ import annotations

import enum

import pytest

from harnpool._settings import _Settings, check_task_options


class Level(enum.IntEnum):
    HIGH = 7


class Label(str):
    pass


def test_settings_keep_seconds_as_floats_and_retry_on_as_a_tuple() -> None:
    settings = _Settings(
        max_concurrent=2,
        aging=3,
        retry_backoff=1,
        retry_backoff_max=2,
        timeout=4,
        keep_finished_for=5,
        retry_on=iter([KeyError]),  # type: ignore[arg-type]
    )
    seconds = (
        settings.aging,
        settings.retry_backoff,
        settings.retry_backoff_max,
        settings.timeout,
        settings.keep_finished_for,
    )
    assert seconds == (3.0, 1.0, 2.0, 4.0, 5.0)
    assert all(type(value) is float for value in seconds)
    assert settings.retry_on == (KeyError,)


def test_settings_are_frozen() -> None:
    settings = _Settings(max_concurrent=1)
    with pytest.raises(AttributeError):
        settings.max_concurrent = 0  # type: ignore[misc]


def test_subclasses_of_int_and_str_are_stored_as_plain_values() -> None:
    key, priority, group, *_ = check_task_options(
        Label("k\u00e9"), Level.HIGH, Label("g"), 0, (), 1
    )
    assert (key, priority, group) == ("k\u00e9", 7, "g")
    assert (type(key), type(priority), type(group)) == (str, int, str)


def test_a_key_with_a_lone_surrogate_is_refused_by_position() -> None:
    with pytest.raises(ValueError, match=r"key.*index 2"):
        check_task_options("ab\ud800", 0, None, None, None, None)
