"""Every shipped YAML under recipes/configs: its first line is the command that launches it, that command names a
real recipe, and the YAML (with the command's own flags) parses into that recipe's config classes."""

from __future__ import annotations

import ast
import dataclasses
import runpy
import shlex

import pytest
import yaml

from common.cli import parse_configs
from tests.launch import REPO

CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))
# TrainingArguments-based configs on a CPU-only machine (a 7B YAML asks for bf16 on GPUs); only fields a class has.
CPU_OVERRIDES = {"use_cpu": "true", "bf16": "false", "report_to": "none"}


def launch_command(path) -> list[str]:
    """The first line's command (with its `\\` continuation lines), without the comment marks, as argv words."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# "), f"{path.name}: the first line must be '# <launch command>'"
    command = lines[0][2:]
    for line in lines[1:]:
        if not command.endswith("\\"):
            break
        command = command[:-1] + " " + line.lstrip("#").strip()
    return shlex.split(command)


def recipe_config_classes(recipe) -> list[type]:
    """The classes the recipe hands to `parse_configs([...])` or `run_recipe(main, [...])`, read from its source (the
    recipe is not run)."""
    namespace = runpy.run_path(str(recipe), run_name="recipe_under_test")
    lists = [
        arg
        for node in ast.walk(ast.parse(recipe.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("parse_configs", "run_recipe")
        for arg in node.args
        if isinstance(arg, ast.List)
    ]
    assert len(lists) == 1, f"{recipe.name}: one parse_configs([...]) or run_recipe(main, [...])"
    return [namespace[element.id] for element in lists[0].elts]


def test_configs_are_found():
    assert len(CONFIGS) >= 8  # build_pairs x2, eval_reward, mpo x3, reward x2 today


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_yaml_parses_with_its_launch_command(path, monkeypatch, tiny_vlm_path, toy_data):
    monkeypatch.chdir(REPO)  # the commands use paths relative to the repository root
    words = launch_command(path)
    scripts = [i for i, w in enumerate(words) if w.startswith("recipes/") and w.endswith(".py")]
    assert scripts, f"{path.name}: the first line names no recipes/*.py script: {words}"
    recipe = REPO / words[scripts[0]]
    assert recipe.is_file(), f"{path.name}: {recipe} does not exist"
    args = words[scripts[0] + 1 :]
    assert args[:2] == ["--config", f"recipes/configs/{path.name}"], f"{path.name}: the command must load this file"

    classes = recipe_config_classes(recipe)
    fields = {f.name for cls in classes for f in dataclasses.fields(cls)}
    assert set(yaml.safe_load(path.read_text())) <= fields  # every YAML key is an option of the recipe
    # validate() checks that model and data paths exist: the command's outputs/... are replaced by local fixtures
    local = {**CPU_OVERRIDES, "model_name_or_path": tiny_vlm_path, "policy_name_or_path": tiny_vlm_path,
             "reward_model_name_or_path": tiny_vlm_path, "train_data": toy_data["pairs_train"]}  # fmt: skip
    overrides = [w for name, value in local.items() if name in fields for w in (f"--{name}", str(value))]
    configs = parse_configs(classes, args + overrides)
    CHECKS.get(recipe.name, lambda _: None)(configs)


def _reward(configs):
    (cfg,) = configs
    stages = cfg.stage_configs()
    assert [s.name for s in stages] == ["multimodal", "with_text"]
    if "7b" in cfg.output_dir:  # the paper: stage 1 lr 1e-5 multimodal only; stage 2 lr 1e-6 adds text-only
        assert cfg.for_stage(stages[0]).learning_rate == 1e-5 and cfg.for_stage(stages[1]).learning_rate == 1e-6
        assert cfg.num_train_epochs == 2 and cfg.per_device_train_batch_size == 1 and cfg.freeze_vision_tower
        assert set(stages[0].datasets) < set(stages[1].datasets)


def _mpo(configs):
    cfg = configs[0]
    cfg.validate()
    assert cfg.loss_type == ["sigmoid", "bco_pair", "sft"] and cfg.loss_weights == [0.8, 0.2, 1.0]
    assert cfg.beta == 0.1


def _build_pairs(configs):
    configs[0].validate()


CHECKS = {"train_reward.py": _reward, "mpo_qwen.py": _mpo, "build_pairs.py": _build_pairs}
