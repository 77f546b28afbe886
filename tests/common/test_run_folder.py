"""The run-folder policy: every config field counts unless declared, input contents are hashed, a changed rerun is
refused naming what changed, overwrite_output_dir starts over, the resolved config sits beside the outputs."""

import json
import os
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from common import run_folder
from common.run_folder import RUN_CONFIG_FILE, RunFolderError, claim_output_dir, fingerprint, not_affecting_results


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
