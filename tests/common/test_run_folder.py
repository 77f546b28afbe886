"""The run-folder policy: every config field counts unless declared, input contents are hashed, a changed rerun is
refused naming what changed (the training length may grow, never shrink), overwrite_output_dir starts over, the
resolved config sits beside the outputs, one live run per folder (two real processes; two ranks under torchrun)."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from common import run_folder
from common.checkpoints import mark_complete, newest_common_step
from common.distributed import free_port
from common.run_folder import (
    LOCK_FILE,
    RUN_CONFIG_FILE,
    RunFolderError,
    claim_output_dir,
    fingerprint,
    is_finished,
    not_affecting_results,
    release_output_dir,
)
from tests.launch import REPO, cpu_env


@dataclass
class JobConfig:
    NOT_AFFECTING_RESULTS: ClassVar[tuple[str, ...]] = ("output_dir", "progress")

    output_dir: str = "out"
    lr: float = 0.1
    layers: list[int] = field(default_factory=lambda: [1, 2])
    progress: bool = True


def test_same_run_resumes_changed_field_or_input_is_refused_by_name(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("a\n")
    out = tmp_path / "out"
    assert claim_output_dir(out, [JobConfig()], {"data": data}) is False  # fresh
    saved = json.loads((out / RUN_CONFIG_FILE).read_text())
    assert saved["config"]["JobConfig"] == {"output_dir": "out", "lr": 0.1, "layers": [1, 2], "progress": True}
    assert saved["counted_fields"]["JobConfig"] == ["layers", "lr"]
    (out / "partial").write_text("work of the first run")
    assert claim_output_dir(out, [JobConfig(progress=False)], {"data": data}) is True  # a declared field: resumes
    with pytest.raises(
        RunFolderError, match=r"config field layers: \[1, 2\] -> \[1\]\n  - config field lr: 0.1 -> 0.2"
    ):
        claim_output_dir(out, [JobConfig(lr=0.2, layers=[1])], {"data": data})
    data.write_text("b\n")  # other content at the same path
    with pytest.raises(RunFolderError, match=r"input data \(.*data.jsonl\): other content at the same path"):
        claim_output_dir(out, [JobConfig()], {"data": data})
    assert (out / "partial").exists()  # refusing changes nothing
    assert claim_output_dir(out, [JobConfig()], {"data": data}, overwrite=True) is False  # starts over
    assert not (out / "partial").exists()


def test_a_folder_of_something_else_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty and holds no run_config.json"):
        claim_output_dir(tmp_path / "out", [JobConfig()], {})
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        claim_output_dir(tmp_path / "file", [JobConfig()], {})


def test_fingerprints_hash_content_with_a_per_file_cache(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights" * 1000)
    (model / "config.json").write_text("{}")
    first = fingerprint(model)
    assert first.startswith("sha256:") and fingerprint("org/hub-id") == "org/hub-id"
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k))
    assert fingerprint(model) == first and reads == []  # unchanged (path, size, mtime): no file read again
    (model / "model.safetensors").write_bytes(b"WEIGHTS" * 1000)  # same size, new content and mtime
    assert fingerprint(model) != first and reads == [model / "model.safetensors"]
    (model / "cache-0123.arrow").write_bytes(b"written by datasets when it reads a folder")
    assert fingerprint(model) == fingerprint(model)


def test_a_jsonl_files_images_are_part_of_its_fingerprint(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    (tmp_path / "pairs.images").mkdir()
    (tmp_path / "pairs.images" / "0.png").write_bytes(b"a")
    before = fingerprint(data)
    (tmp_path / "pairs.images" / "0.png").write_bytes(b"b")
    os.utime(tmp_path / "pairs.images" / "0.png", ns=(1, 1))
    assert fingerprint(data) != before


def test_training_arguments_fields_count_unless_declared():
    from mpo.config import MPOConfig
    from reward.config import RewardConfig

    for cls in (RewardConfig, MPOConfig):
        declared = not_affecting_results(cls(output_dir="o", use_cpu=True))
        assert {"logging_steps", "save_steps", "report_to", "output_dir", "on_bad_record"} <= declared
        assert not {"learning_rate", "seed", "lr_scheduler_type", "weight_decay", "lora_alpha"} & declared
    assert run_folder.TRAINING_ARGUMENTS_NOT_AFFECTING_RESULTS  # declared once, for every TrainingArguments job


@dataclass
class LengthConfig:
    """A job whose training length (`max_steps`, and each stage's `epochs`) may grow."""

    MAY_GROW: ClassVar[tuple[str, ...]] = ("max_steps", "stages.*.epochs")

    max_steps: int = 4
    stages: list[dict] = field(default_factory=lambda: [{"name": "s1", "epochs": 1.0}])


def test_training_length_may_grow_never_shrink(tmp_path, capsys):
    out = tmp_path / "out"
    assert claim_output_dir(out, [LengthConfig()], {}) is False
    assert claim_output_dir(out, [LengthConfig(max_steps=8)], {}) is True  # grows: the run continues
    assert "the training length grows (max_steps: 4 -> 8): continuing from the newest complete checkpoint" in (
        capsys.readouterr().out
    )
    assert json.loads((out / RUN_CONFIG_FILE).read_text())["config"]["LengthConfig"]["max_steps"] == 8
    with pytest.raises(RunFolderError, match=r"max_steps: 8 -> 4 \(the training length may grow, never shrink\)"):
        claim_output_dir(out, [LengthConfig(max_steps=4)], {})
    with pytest.raises(RunFolderError, match=r"max_steps: 8 -> -1"):  # steps to epochs: another length, refused
        claim_output_dir(out, [LengthConfig(max_steps=-1)], {})
    grown_stage = [{"name": "s1", "epochs": 3.0}]
    assert claim_output_dir(out, [LengthConfig(max_steps=8, stages=grown_stage)], {}) is True
    assert "stages.0.epochs: 1.0 -> 3.0" in capsys.readouterr().out
    with pytest.raises(RunFolderError, match=r"config field stages: .* -> \[\{'epochs': 4.0, 'name': 's2'\}\]"):
        claim_output_dir(out, [LengthConfig(max_steps=8, stages=[{"name": "s2", "epochs": 4.0}])], {})


def test_a_grown_schedule_that_depends_on_the_length_is_said(tmp_path, capsys):
    from mpo.config import MPOConfig

    def cfg(steps, schedule, warmup=0):
        return MPOConfig(output_dir=str(tmp_path / schedule), use_cpu=True, max_steps=steps,
                         lr_scheduler_type=schedule, warmup_steps=warmup)  # fmt: skip

    for schedule, warmup, said in (("constant", 0, False), ("cosine", 0, True), ("constant_with_warmup", 0.1, True)):
        claim_output_dir(tmp_path / schedule, [cfg(2, schedule, warmup)], {})
        assert claim_output_dir(tmp_path / schedule, [cfg(4, schedule, warmup)], {}) is True
        assert ("the steps taken followed the old length's schedule" in capsys.readouterr().out) == said, schedule


def test_is_finished_compares_the_recorded_length(tmp_path):
    from common.cli import write_run_meta
    from mpo.config import MPOConfig

    def cfg(steps):
        return MPOConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=steps)

    assert not is_finished(tmp_path, cfg(4))  # nothing written yet
    write_run_meta(tmp_path, [cfg(4)])
    assert is_finished(tmp_path, cfg(4)) and not is_finished(tmp_path, cfg(8))


HOLD = """import sys, time
from dataclasses import dataclass
from common.run_folder import claim_output_dir
@dataclass
class HeldConfig:
    lr: float = 0.1
claim_output_dir(sys.argv[1], [HeldConfig()], {})
print("claimed", flush=True)
time.sleep(300)
"""


@dataclass
class HeldConfig:  # the config of the run in HOLD (a light process: no test module to import)
    lr: float = 0.1


def hold_lock(folder) -> subprocess.Popen:
    """Another process that claims `folder` and keeps running (until killed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def test_a_second_live_run_is_refused_naming_it_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(RunFolderError, match=rf"in use by a live run: PID {holder.pid} on host "
                                                 rf"{socket.gethostname()} \(since "):  # fmt: skip
            claim_output_dir(out, [HeldConfig()], {})
    finally:
        holder.kill()
        holder.wait()
    assert claim_output_dir(out, [HeldConfig()], {}) is True  # the same run: resumes, taking the lock over
    assert f"taking over the lock of PID {holder.pid} on host {socket.gethostname()}" in capsys.readouterr().out
    with pytest.raises(subprocess.CalledProcessError):  # now this process holds it: another one is refused
        subprocess.run([sys.executable, "-c", HOLD, str(out)], env={**os.environ, "PYTHONPATH": str(REPO)},
                       check=True, capture_output=True, timeout=120)  # fmt: skip
    release_output_dir(out)
    assert (out / LOCK_FILE).read_text() == ""  # released: names no holder
    assert claim_output_dir(out, [HeldConfig(lr=0.5)], {}, overwrite=True) is False  # starting over keeps the lock
    assert (out / LOCK_FILE).is_file() and sorted(p.name for p in out.iterdir()) == [LOCK_FILE, RUN_CONFIG_FILE]
    release_output_dir(out)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank gloo launch of tests/scripts/two_ranks_run_folder.py: every rank's view."""
    base = tmp_path_factory.mktemp("ranks")
    for node, complete in (("node0", (2, 4, 6)), ("node1", (2, 4))):  # node1 was killed writing checkpoint-6
        for step in (2, 4, 6):
            (base / node / f"checkpoint-{step}").mkdir(parents=True)
            (base / node / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"x" * step)
            if step in complete:
                mark_complete(base / node / f"checkpoint-{step}")
    holder = hold_lock(base / "busy")
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "tests/scripts/two_ranks_run_folder.py"), str(base)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=cpu_env(2), capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [json.loads((base / f"rank{r}.json").read_text()) for r in (0, 1)], holder.pid


def test_under_a_launcher_one_process_per_node_holds_the_lock(two_ranks):
    ranks, holder = two_ranks
    assert [r["one_node"] for r in ranks] == [{"resumed": False, "holds_lock": True},
                                              {"resumed": False, "holds_lock": False}]  # fmt: skip
    # two nodes on one shared folder: node 1's rank 0 finds the lock held by this run's rank 0
    assert [r["shared_two_nodes"] for r in ranks] == [{"resumed": False, "holds_lock": True},
                                                      {"resumed": False, "holds_lock": False}]  # fmt: skip
    for r in ranks:  # another live run: every rank refuses, naming it
        assert f"in use by a live run: PID {holder} on host {socket.gethostname()}" in r["busy"]["error"]


def test_resume_takes_the_newest_checkpoint_complete_on_every_node(two_ranks):
    ranks, _ = two_ranks
    assert [Path(r["checkpoint"]).parts[-2:] for r in ranks] == [("node0", "checkpoint-4"), ("node1", "checkpoint-4")]
    assert [r["left"] for r in ranks] == [["checkpoint-2", "checkpoint-4"]] * 2  # newer ones are written again


def test_newest_common_step():
    assert newest_common_step([[2, 4, 6], [2, 4], [4, 6]]) == 4
    assert newest_common_step([[2], [4]]) is None and newest_common_step([[2, 6]]) == 6
