"""The fault harness's tally, printed at the end of the session so the figures can be quoted."""

from tests.faults.harness import TALLY


def pytest_terminal_summary(terminalreporter):
    if TALLY.kills_tried:
        terminalreporter.write_line(TALLY.summary())
