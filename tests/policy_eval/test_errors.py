"""Refusals of the policy evaluation: `common.errors` classes (one line, exit 2 through the recipe; exit 1 for a failed
evaluator), and the job's order: config, then data read and checked, then its output folder, then the model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import policy_eval.evaluate
from common.errors import ConfigError, InputError, InputNotFound, exit_code_of
from common.schema import RecordError
from policy_eval import read_benchmark, shards
from policy_eval.evaluate import EvalPolicyConfig, evaluate_policy
from policy_eval.external import read_results, run_eval_command
from tests.launch import REPO, cpu_env

CONFIG = REPO / "recipes" / "configs" / "eval_policy_tiny.yaml"


def _mmstar_with_bad_answers(hub_data, folder: Path, bad_rows) -> Path:
    """The MMStar fixture (same file, columns and Arrow types) with answer "E" (not an option letter) in `bad_rows`."""
    (src,) = shards("mmstar", hub_data["mmstar"])
    table = pq.read_table(src)
    answers = ["E" if i in bad_rows else a for i, a in enumerate(table["answer"].to_pylist())]
    table = table.set_column(table.schema.get_field_index("answer"), "answer", pa.array(answers, pa.string()))
    folder.mkdir(parents=True)
    pq.write_table(table, folder / src.name)
    return folder


def _eval_policy(tiny_vlm_path, out: Path, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "recipes" / "eval_policy.py"), "--config", str(CONFIG), "--model",
           str(tiny_vlm_path), "--output_dir", str(out), *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=cpu_env(1), capture_output=True, text=True, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess, exit_code: int) -> str:
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0].removeprefix("error: ")


def test_the_recipe_refuses_in_one_line_with_exit_status_2(hub_data, tiny_vlm_path, tmp_path):
    out = tmp_path / "out"
    # a missing data folder
    message = _one_error_line(_eval_policy(tiny_vlm_path, out, "--benchmarks", "mmstar", "--data",
                                           f"mmstar={tmp_path / 'nowhere'}"), 2)  # fmt: skip
    assert message == f"mmstar: no such file or folder, nor a hub dataset id: {tmp_path / 'nowhere'}"
    # an unknown benchmark
    message = _one_error_line(_eval_policy(tiny_vlm_path, out, "--benchmarks", "mmbench"), 2)
    assert "--benchmarks: unknown 'mmbench'" in message
    # a malformed row under on_bad_record: raise, named before the output folder is made or the model loads
    bad = _mmstar_with_bad_answers(hub_data, tmp_path / "bad" / "MMStar", bad_rows={2})
    message = _one_error_line(_eval_policy(tiny_vlm_path, out, "--benchmarks", "mmstar", "--data", f"mmstar={bad}"), 2)
    assert "record 2 (#2), field 'answer'" in message
    # every row skipped: nothing to answer
    all_bad = _mmstar_with_bad_answers(hub_data, tmp_path / "all-bad" / "MMStar", bad_rows=range(100))
    message = _one_error_line(_eval_policy(tiny_vlm_path, out, "--benchmarks", "mmstar", "--data",
                                           f"mmstar={all_bad}", "--on_bad_record", "skip"), 2)  # fmt: skip
    assert message.startswith("mmstar: no question left to answer (skipped: {'total': 6")
    assert not out.exists()


class ModelLoaded(AssertionError):
    pass


def test_data_is_read_and_checked_before_the_output_folder_and_the_model(hub_data, tiny_vlm_path, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    def no_model_load(cfg):
        raise ModelLoaded("the model loaded before the data was checked")

    monkeypatch.setattr(policy_eval.evaluate, "make_answerer", no_model_load)
    bad = _mmstar_with_bad_answers(hub_data, tmp_path / "MMStar", bad_rows={2})
    out = tmp_path / "out"
    cfg = EvalPolicyConfig(model=str(tiny_vlm_path), benchmarks="mmstar,ai2d", output_dir=str(out),
                           data=[f"mmstar={bad}", f"ai2d={hub_data['ai2d']}"])  # fmt: skip
    with pytest.raises(RecordError, match=r"record 2 \(#2\), field 'answer'"):
        evaluate_policy(cfg)
    assert not out.exists()
    cfg.data = [f"mmstar={hub_data['mmstar']}", f"ai2d={tmp_path / 'nowhere'}"]  # the second benchmark's data too
    with pytest.raises(InputNotFound, match="ai2d: no such file or folder"):
        evaluate_policy(cfg)
    assert not out.exists()
    cfg.data = [f"mmstar={hub_data['mmstar']}", f"ai2d={hub_data['ai2d']}"]  # good data: then the model loads
    with pytest.raises(ModelLoaded):
        evaluate_policy(cfg)
    assert out.is_dir()


def test_reader_refusals_are_expected_errors(hub_data, tmp_path):
    cases = [
        (lambda: read_benchmark("mmbench", tmp_path), ConfigError, ValueError),
        (lambda: read_benchmark("mmstar", tmp_path / "nowhere"), InputNotFound, FileNotFoundError),
        (lambda: read_benchmark("mathvista_testmini", tmp_path), InputNotFound, FileNotFoundError),
    ]
    twice = tmp_path / "twice"  # the same shard under two names: repeated ids
    twice.mkdir()
    (src,) = shards("mmstar", hub_data["mmstar"])
    shutil.copy(src, twice / "a.parquet")
    shutil.copy(src, twice / "b.parquet")
    cases.append((lambda: read_benchmark("mmstar", twice), InputError, ValueError))
    for call, expected, builtin in cases:
        with pytest.raises(expected) as err:
            call()
        assert isinstance(err.value, builtin) and exit_code_of(err.value) == 2, err.value
    assert "repeated item ids ['mmstar-0'" in str(err.value)


def test_eval_command_failures_are_expected_errors(tmp_path):
    from policy_eval.external import EvalCommandError

    with pytest.raises(EvalCommandError, match="exited with 3") as err:
        run_eval_command("echo {policy} {output_dir}; exit 3", "p", tmp_path / "failed")
    assert isinstance(err.value, RuntimeError) and exit_code_of(err.value) == 1
    with pytest.raises(InputNotFound, match="wrote no .json results"):
        run_eval_command("echo {policy} > {output_dir}/out.txt", "p", tmp_path / "no-json")
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / "r.json").write_text('{"results": {"task": "done"}}')
    with pytest.raises(InputError, match="no numeric result"):
        read_results(tmp_path / "text-only")
    with pytest.raises(ConfigError, match="never names {policy}"):
        run_eval_command("echo {output_dir}", "p", tmp_path / "bad-template")
