"""The fault harness's tally, printed at the end of the session so the figures can be quoted."""

from tests.data_builders.conftest import tiny_reward_path  # noqa: F401  (the pair builder's reward model)
from tests.faults.harness import TALLY


def pytest_terminal_summary(terminalreporter):
    if TALLY.kills_tried:
        terminalreporter.write_line(TALLY.summary())
