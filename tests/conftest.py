"""Shared fixtures: offline environment, tiny Qwen2.5-VL saved once per session, the toy task."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402

from common.tiny_vlm import TinyVLMSpec, save_tiny_vlm  # noqa: E402
from common.toy_task import ToyTaskConfig, write_toy_task  # noqa: E402

LONG_MARKS = ("faults", "deepspeed")  # the multi-process runs of 30-100 s each


def pytest_collection_modifyitems(config, items):
    """Run the long multi-process tests first, so that under `pytest -n 2` (the README's test command) neither worker
    is left with one of them at the end; skip the `gpu`-marked tests, with the reason, where torch sees no CUDA."""
    import torch

    items.sort(key=lambda item: not any(mark in item.keywords for mark in LONG_MARKS))  # stable: file order within
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """A random-weight tiny Qwen2.5-VL (512-token BPE) and its processor, saved with save_pretrained."""
    return save_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl", TinyVLMSpec.preset("tiny"))


@pytest.fixture(scope="session")
def tiny_reward_path(tiny_vlm_path, tmp_path_factory):
    """The tiny VLM with a freshly initialised (seeded) value head, saved in the reward checkpoint format."""
    from reward.model import load_reward_model, save_reward_model

    model, processor = load_reward_model(tiny_vlm_path, new_head_ok=True)
    return save_reward_model(model, processor, tmp_path_factory.mktemp("models") / "tiny-reward")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A small toy task (8 train / 4 eval examples per kind) as `datasets` folders."""
    return write_toy_task(tmp_path_factory.mktemp("toy"), ToyTaskConfig(n_train=8, n_eval=4))


@pytest.fixture(autouse=True)
def _fresh_wandb():
    """wandb keeps its settings (WANDB_DIR, mode) in a process-wide singleton read once: reset it after each test so
    the next test's environment is the one that counts."""
    yield
    import sys

    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
