"""Fixtures of the policy-benchmark tests: a few rows of each benchmark in its hub layout, written once per session."""

import pytest

from tests.policy_eval.hub_fixtures import write_all


@pytest.fixture(scope="session")
def hub_data(tmp_path_factory):
    """{benchmark name: root folder of its hub-layout fixture}."""
    return write_all(tmp_path_factory.mktemp("policy_bench"))
