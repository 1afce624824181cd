"""Fixtures for the crash and fault suite, and the summary of the figures it establishes.

A test hands its figures to the ``report_figures`` fixture; they are printed in a
"reliability figures" section at the end of the run, whatever the capture mode,
so ``make test`` and ``make stress`` show them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

Figures = Mapping[str, object]
ReportFigures = Callable[[str, Figures], None]

_figures_key = pytest.StashKey[list[tuple[str, Figures]]]()


def _collected(config: pytest.Config) -> list[tuple[str, Figures]]:
    return config.stash.setdefault(_figures_key, [])


@pytest.fixture
def report_figures(request: pytest.FixtureRequest) -> ReportFigures:
    """Return ``report(title, figures)``, which adds a line to the end-of-run summary."""
    collected = _collected(request.config)

    def report(title: str, figures: Figures) -> None:
        collected.append((f"{request.node.name}: {title}", dict(figures)))

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    collected = _collected(terminalreporter.config)
    if not collected:
        return
    terminalreporter.write_sep("=", "reliability figures")
    for title, figures in collected:
        values = ", ".join(f"{name}={value}" for name, value in figures.items())
        terminalreporter.write_line(f"{title}: {values}")
