"""Prints how many fuzz / hardening cases the session tried (counted by corpus.record)."""

from __future__ import annotations

from tests.reliability.corpus import TRIED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TRIED:
        return
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(TRIED.items()))
    terminalreporter.write_sep("-", "reliability cases tried")
    terminalreporter.write_line(f"{sum(TRIED.values())} cases tried ({parts})")
