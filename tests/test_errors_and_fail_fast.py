"""Expected errors read as one line (`error: <message>`, exit 2 for usage/config/data, 1 otherwise) through the real
recipes, once under a launcher; and every job refuses bad data or a model without a value head before it claims its
output folder or loads a model (issue 20, items 2-4)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import run_recipe
from common.distributed import free_port
from common.errors import ConfigError
from common.io import SkipLog, read_records, write_records
from common.run_folder import RUN_CONFIG_FILE
from common.schema import RecordError
from data_builders.sources import read_prompts
from tests.launch import REPO, cpu_env

EMPTY_TURN = "the user turn is empty (no text, no image)"
EMPTY_PROMPT_ERROR = re.escape(f"record 'empty-prompt' (#1), field 'prompt[0]': {EMPTY_TURN}")


def _recipe(script: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "recipes" / script), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env or cpu_env(1), capture_output=True, text=True, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess, exit_code: int, alone: bool = True) -> str:
    """The message of a refusal: stderr is exactly `error: <message>` (or, not `alone`, ends with it after library
    warnings, with no traceback) and the exit status is `exit_code`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr[-3000:])
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 or not alone, proc.stderr[-3000:]
    return lines[-1].removeprefix("error: ")


def _with_empty_prompt(records: list[dict]) -> list[dict]:
    """`records` with a second record whose one user turn is "" and that has no image."""
    bad = {**records[0], "id": "empty-prompt", "prompt": [{"role": "user", "content": [{"type": "text", "text": ""}]}],
           "images": []}  # fmt: skip
    return [records[0], bad, *records[1:]]


@pytest.fixture
def prompts_with_empty_one(toy_data, tmp_path):
    prompts = [dict(r) for r in read_records(toy_data["prompts_train"], "prompt").select(range(4))]
    return write_records(_with_empty_prompt(prompts), tmp_path / "prompts.jsonl")


@pytest.fixture
def pairs_with_empty_prompt(toy_data, tmp_path):
    pairs = [dict(r) for r in read_records(toy_data["pairs_train"]).select(range(6))]
    return write_records(_with_empty_prompt(pairs), tmp_path / "pairs.jsonl")


def _head_less_copy(tiny_reward_path, tmp_path):
    """The tiny reward model without its `value_head.safetensors`: a base VLM, not a reward model."""
    folder = shutil.copytree(tiny_reward_path, tmp_path / "no-head")
    (folder / "value_head.safetensors").unlink()
    return folder


# --- one line per refusal, through the recipes


def test_refusals_print_one_line_with_their_exit_status(tmp_path, toy_data, tiny_vlm_path, tiny_reward_path,
                                                        prompts_with_empty_one):  # fmt: skip
    # an invalid command line
    message = _one_error_line(_recipe("make_toy_data.py", "--output_dir", tmp_path / "toy", "--n_trian", 2), 2)
    assert "--n_trian" in message
    # an invalid config (one problem, so one line)
    message = _one_error_line(_recipe("make_toy_data.py", "--config", tmp_path / "missing.yaml"), 2)
    assert "missing.yaml" in message
    pairs = ["--policy_name_or_path", tiny_vlm_path, "--config", REPO / "recipes/configs/build_pairs_tiny.yaml",
             "--progress", "false"]  # fmt: skip
    # a bad record under on_bad_record: raise
    out = tmp_path / "pairs-raise"
    proc = _recipe("build_pairs.py", *pairs, "--prompts", prompts_with_empty_one, "--reward_model_name_or_path",
                   tiny_reward_path, "--output_dir", out, "--on_bad_record", "raise")  # fmt: skip
    assert _one_error_line(proc, 2).startswith(f"record 'empty-prompt' (#1), field 'prompt[0]': {EMPTY_TURN}")
    assert not out.exists()  # refused before the folder was claimed
    # a model folder without a value head
    out = tmp_path / "pairs-no-head"
    proc = _recipe("build_pairs.py", *pairs, "--prompts", toy_data["prompts_train"], "--reward_model_name_or_path",
                   _head_less_copy(tiny_reward_path, tmp_path), "--output_dir", out)  # fmt: skip
    assert "has no value_head.safetensors: it is not a reward model" in _one_error_line(proc, 2)
    assert not out.exists()
    # a folder that holds something else (the run-folder refusal)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    proc = _recipe("build_pairs.py", *pairs, "--prompts", toy_data["prompts_train"], "--reward_model_name_or_path",
                   tiny_reward_path, "--output_dir", occupied)  # fmt: skip
    assert "is not empty and holds no run_config.json" in _one_error_line(proc, 2)
    # VLRM_DEBUG=1: the traceback first, the same last line
    proc = _recipe("make_toy_data.py", "--output_dir", tmp_path / "toy", "--n_trian", 2,
                   env={**cpu_env(1), "VLRM_DEBUG": "1"})  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[0].startswith("Traceback") and lines[-1].startswith("error: ")


def test_a_full_disk_is_one_line_with_exit_status_1(tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        proc = _recipe("make_toy_data.py", "--output_dir", disk / "toy", "--n_train", 64, "--fmt", "jsonl")
        assert "No space left on device" in _one_error_line(proc, 1)
    finally:
        subprocess.run(["umount", str(disk)], check=True, timeout=30)


def test_unexpected_errors_keep_their_traceback_and_expected_ones_exit(capsys):
    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        run_recipe(bug)

    def refusal():
        raise ConfigError("lr: must be > 0")

    with pytest.raises(SystemExit) as exit_:
        run_recipe(refusal)
    assert exit_.value.code == 2 and isinstance(exit_.value.__cause__, ConfigError)
    assert capsys.readouterr().err == "error: lr: must be > 0\n"


def test_under_deepspeed_every_rank_exits_and_the_message_prints_once(tmp_path, toy_data, tiny_vlm_path):
    """Both ranks refuse the config (no output_dir); rank 0 reports, the launcher ends rank 1."""
    stages = json.dumps([{"name": "s1", "datasets": {str(toy_data["pairs_train"]): 1.0}}])
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--master_port", str(free_port()), "--num_gpus", "2",
           str(REPO / "recipes/train_reward.py"), "--model_name_or_path", str(tiny_vlm_path), "--stages", stages,
           "--use_cpu", "true"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=cpu_env(2), capture_output=True, text=True, timeout=600)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: invalid reward training config: output_dir: required")
    assert "Traceback" not in proc.stderr


# --- fail fast: nothing claimed, no model loaded


class ModelLoaded(AssertionError):
    pass


def _no_model_load(*args, **kwargs):
    raise ModelLoaded("a model was loaded before the inputs were checked")


def test_reward_job_checks_its_data_before_loading_the_model(monkeypatch, tmp_path, tiny_vlm_path,
                                                             pairs_with_empty_prompt):  # fmt: skip
    import reward.train
    from reward.config import RewardConfig

    monkeypatch.setattr(reward.train, "load_reward_model", _no_model_load)
    stages = [{"name": "s1", "datasets": {str(pairs_with_empty_prompt): 1.0}, "max_steps": 1}]
    cfg = RewardConfig(output_dir=str(tmp_path / "run"), model_name_or_path=str(tiny_vlm_path), stages=stages,
                       use_cpu=True, report_to="none")  # fmt: skip
    with pytest.raises(RecordError, match=EMPTY_PROMPT_ERROR):
        reward.train.train_reward_model(cfg)
    assert not (tmp_path / "run" / RUN_CONFIG_FILE).exists()
    # with on_bad_record: skip the record is dropped and counted
    cfg.on_bad_record = "skip"
    data = reward.train.read_stage_data(cfg, cfg.stage_configs()[0], str(tiny_vlm_path))
    assert len(data.train) == 6 and dict(data.skipped.counts) == {f"prompt: {EMPTY_TURN}": 1}


def test_mpo_checks_its_data_and_eval_reward_model_before_claiming(monkeypatch, tmp_path, tiny_vlm_path, toy_data,
                                                                   pairs_with_empty_prompt):  # fmt: skip
    import mpo.train
    from mpo.config import MPOConfig

    monkeypatch.setattr(mpo.train, "load_processor", _no_model_load)
    out = tmp_path / "run"
    cfg = MPOConfig(output_dir=str(out), use_cpu=True, bf16=False, model_name_or_path=str(tiny_vlm_path),
                    train_data=str(pairs_with_empty_prompt), report_to="none", max_steps=1)  # fmt: skip
    with pytest.raises(RecordError, match=EMPTY_PROMPT_ERROR):
        mpo.train.train_mpo(cfg)
    assert not out.exists()
    # the recipe's --eval_reward_model is checked before anything loads too
    proc = _recipe("mpo_qwen.py", "--model_name_or_path", tiny_vlm_path, "--train_data", toy_data["pairs_train"],
                   "--output_dir", out, "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
                   "--eval_reward_model", tiny_vlm_path)  # fmt: skip
    # (transformers warns about MPOConfig's `gradient_checkpointing` on stderr first)
    assert "eval_reward_model: " in _one_error_line(proc, 2, alone=False) and not out.exists()


def test_build_pairs_checks_the_value_head_before_claiming(monkeypatch, tmp_path, tiny_vlm_path, tiny_reward_path,
                                                           toy_data, prompts_with_empty_one):  # fmt: skip
    """It used to claim the folder first: after the head was added, the same command was refused as a changed run."""
    import data_builders.build
    from data_builders.config import BuildPairsConfig

    monkeypatch.setattr(data_builders.build, "make_sampler", _no_model_load)
    reward_model = _head_less_copy(tiny_reward_path, tmp_path)
    out = tmp_path / "pairs"
    cfg = BuildPairsConfig(prompts=str(toy_data["prompts_train"]), policy_name_or_path=str(tiny_vlm_path),
                           reward_model_name_or_path=str(reward_model), output_dir=str(out), device="cpu",
                           progress=False)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="reward_model_name_or_path: .* has no value_head.safetensors"):
        data_builders.build.build_pairs(cfg)
    assert not out.exists()
    shutil.copy(tiny_reward_path / "value_head.safetensors", reward_model)  # the user adds the head
    with pytest.raises(ModelLoaded):  # the same command now goes on to load the models (no "changed run")
        data_builders.build.build_pairs(cfg)
    assert (out / RUN_CONFIG_FILE).is_file()
    # an empty prompt: a named error before the claim, or a counted skip
    strict = BuildPairsConfig(**{**cfg.__dict__, "prompts": str(prompts_with_empty_one), "on_bad_record": "raise",
                                 "output_dir": str(tmp_path / "strict")})  # fmt: skip
    with pytest.raises(RecordError, match=EMPTY_PROMPT_ERROR):
        data_builders.build.build_pairs(strict)
    assert not (tmp_path / "strict").exists()
    skipped = SkipLog()
    assert len(read_prompts(prompts_with_empty_one, skipped=skipped)) == 4
    assert dict(skipped.counts) == {f"prompt: {EMPTY_TURN}": 1}


def test_rounds_check_the_reward_models_before_claiming(tmp_path, tiny_vlm_path, tiny_reward_path, toy_data):
    from rounds.config import RoundsConfig
    from rounds.loop import run_rounds

    mpo_yaml = tmp_path / "mpo.yaml"
    mpo_yaml.write_text("use_cpu: true\nbf16: false\nreport_to: none\n")
    out = tmp_path / "rounds"
    head_less = _head_less_copy(tiny_reward_path, tmp_path)
    common = dict(policy_name_or_path=str(tiny_vlm_path), prompts=str(toy_data["prompts_train"]),
                  eval_prompts=str(toy_data["prompts_eval"]), mpo_config=str(mpo_yaml), output_dir=str(out),
                  build_pairs_config=str(REPO / "recipes/configs/build_pairs_tiny.yaml"), device="cpu")  # fmt: skip
    for models in ({"reward_model_name_or_path": str(head_less)},
                   {"reward_model_name_or_path": str(tiny_reward_path),
                    "heldout_reward_model_name_or_path": str(head_less)}):  # fmt: skip
        with pytest.raises(FileNotFoundError, match=r"reward_model_name_or_path: .* has no value_head\.safetensors"):
            run_rounds(RoundsConfig(**common, **models))
        assert not out.exists()


def test_the_server_checks_the_value_head_before_loading(monkeypatch, tmp_path, tiny_reward_path):
    import reward.scorer
    from reward.serving.app import ServeConfig, serve

    monkeypatch.setattr(reward.scorer.RewardScorer, "from_pretrained", _no_model_load)
    with pytest.raises(FileNotFoundError, match=r"--model: .* has no value_head\.safetensors"):
        serve(ServeConfig(), reward.scorer.ScorerConfig(model_name_or_path=str(_head_less_copy(tiny_reward_path,
                                                                                               tmp_path))))  # fmt: skip
