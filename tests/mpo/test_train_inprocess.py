"""`train_mpo` end to end in one process: bad records skipped and counted, wandb offline, freezing, eval hook."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText

from common.io import read_records, write_records
from common.run_folder import LOCK_FILE, RunFolderError
from common.vl_training import freeze_parts
from mpo.config import MPOConfig
from mpo.train import train_mpo
from tests.resume import KillAtStep, LossLog, max_weight_diff


def test_train_mpo_in_process(tiny_vlm_path, toy_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    data = tmp_path / "pairs.jsonl"
    write_records(read_records(toy_data["pairs_train"]).select(range(8)), data)
    with open(data, "a") as f:  # one record without a rejected response
        bad = {"id": "bad-1", "prompt": [{"role": "user", "content": "hi"}],
               "chosen": [{"role": "assistant", "content": "a"}]}  # fmt: skip
        f.write(json.dumps(bad) + "\n")
    out = tmp_path / "run"
    cfg = MPOConfig(output_dir=str(out), use_cpu=True, bf16=False, model_name_or_path=str(tiny_vlm_path),
                    train_data=str(data), on_bad_record="skip", max_steps=2, per_device_train_batch_size=4,
                    learning_rate=1e-3, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
                    report_to="wandb", wandb_project="mpo-test", run_name="tiny", eval_pairs=str(toy_data["pairs_eval"]),
                    eval_every_n_steps=2)  # fmt: skip
    assert train_mpo(cfg) == out
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["pairs"] == 8 and meta["skipped"]["total"] == 1
    assert list(meta["skipped"]["by_reason"]) == ["rejected: missing"]
    history = json.loads((out / "mpo_history.json").read_text())
    assert [e["step"] for e in history["eval"]] == [0, 2]  # the starting policy, then after training
    assert [h["step"] for h in history["train"]] == [1, 2]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    AutoModelForImageTextToText.from_pretrained(out)
    before, log = _files(out), LossLog()
    assert train_mpo(cfg, callbacks=[log]) == out  # the finished run again: nothing to do
    after = _files(out)
    assert log.losses == {} and {k for k in after if after[k] != before.get(k)} == {LOCK_FILE}  # no step, no write
    assert "holds this finished run: nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags,trainable",
    [((True, False, False), {"merger", "language_model", "lm_head"}),
     ((False, True, False), {"vision_blocks", "language_model", "lm_head"}),
     ((False, False, True), {"vision_blocks", "merger"})],
)  # fmt: skip
def test_freeze_parts(tiny_vlm_path, flags, trainable):
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)
    freeze_parts(model, *flags)

    def part(name):
        if name.startswith("model.visual.merger"):
            return "merger"
        if name.startswith("model.visual"):
            return "vision_blocks"
        return "lm_head" if name.startswith("lm_head") else "language_model"

    parts = {}
    for name, p in model.named_parameters():
        parts.setdefault(part(name), set()).add(p.requires_grad)
    assert {k for k, v in parts.items() if v == {True}} == trainable
    assert all(len(v) == 1 for v in parts.values())  # each part all frozen or all trainable


@pytest.mark.parametrize("lora", [False, True])
def test_resume_without_deepspeed_equals_uninterrupted(lora, tiny_vlm_path, toy_data, tmp_path):
    """Killed after step 3 (checkpoint-2 on disk), rerun with the same command (no resume flag: the run folder holds
    this run, so it resumes): steps 3 and 4 give the uninterrupted run's losses and the final model its weights (a
    resume that skips the backbone restarts it from the base weights)."""

    def cfg(name, **kw):
        return MPOConfig(output_dir=str(tmp_path / name), use_cpu=True, bf16=False, model_name_or_path=str(tiny_vlm_path),
                         train_data=str(toy_data["pairs_train"]), ref_logps_dir=str(tmp_path / "ref"), max_steps=4,
                         per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, save_strategy="steps",
                         save_steps=2, gradient_checkpointing=False, report_to="none", use_lora=lora, lora_r=4,
                         **kw)  # fmt: skip

    full, resumed = LossLog(), LossLog()
    train_mpo(cfg("full"), callbacks=[full])
    with pytest.raises(KeyboardInterrupt):
        train_mpo(cfg("killed"), callbacks=[KillAtStep(3)])
    train_mpo(cfg("killed"), callbacks=[resumed])
    assert sorted(resumed.losses) == [3, 4]
    for step in (3, 4):
        assert resumed.losses[step] == pytest.approx(full.losses[step], abs=1e-6), step
    assert max_weight_diff(tmp_path / "killed", tmp_path / "full") <= 1e-6


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_read_only_data_long_duplicate_and_identical_pairs(tiny_vlm_path, toy_data, tmp_path):
    """Nothing is written beside the data (the reference cache goes under output_dir); a very long response is cut
    and counted; a repeated id and a pair whose rejected equals its chosen are trained on and counted."""
    records = [dict(r) for r in read_records(toy_data["pairs_train"]).select(range(4))]
    long = dict(records[2], id="long", chosen=[{"role": "assistant", "content": "It is red." + " word" * 20_000}])
    records += [dict(records[0]), dict(records[1], id="same", rejected=records[1]["chosen"]), long]
    data = tmp_path / "data"
    path = write_records(records, data / "pairs.jsonl")
    before = _files(data)
    for p in [data, *data.rglob("*")]:  # read-only (root ignores the bits: the file listing below is the check)
        p.chmod(0o555 if p.is_dir() else 0o444)
    out = tmp_path / "run"
    cfg = MPOConfig(output_dir=str(out), use_cpu=True, bf16=False, model_name_or_path=str(tiny_vlm_path),
                    train_data=str(path), max_steps=1, per_device_train_batch_size=7, max_length=128,
                    save_strategy="no", gradient_checkpointing=False, report_to="none")  # fmt: skip
    try:
        train_mpo(cfg)
    finally:
        for p in [data, *data.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert _files(data) == before
    meta = json.loads((out / "run_meta.json").read_text())
    assert Path(meta["ref_logps"]["path"]).parent == out / "ref_logps" and meta["ref_logps"]["cached"] is False
    assert meta["ref_logps"]["truncated"] == {"chosen": 1, "rejected": 0}
    assert meta["pairs"] == 7 and meta["flagged"]["by_reason"] == {
        "id: duplicate record id": 1,
        "rejected: the same text as chosen": 1,
    }
    assert any("'same' (#5), field 'rejected'" in e for e in meta["flagged"]["examples"])


def test_grown_and_killed_runs_equal_the_uninterrupted_run_eval_history_included(tiny_vlm_path, toy_data, tmp_path):
    """A finished 2-step run rerun with max_steps 4 continues from its final checkpoint, and a run killed after step 3
    resumes from checkpoint-2: both log steps 3 and 4 with the uninterrupted 4-step run's losses, end on its weights,
    and keep its whole evaluation history (steps 0, 2, 4: the evaluations before the resume come from the checkpoint).
    A shorter max_steps is refused."""

    def cfg(name, steps=4):
        return MPOConfig(output_dir=str(tmp_path / name), use_cpu=True, bf16=False, model_name_or_path=str(tiny_vlm_path),
                         train_data=str(toy_data["pairs_train"]), ref_logps_dir=str(tmp_path / "ref"), max_steps=steps,
                         per_device_train_batch_size=4, learning_rate=1e-3, lr_scheduler_type="constant",
                         logging_steps=1, save_strategy="steps", save_steps=2, gradient_checkpointing=False,
                         report_to="none", eval_pairs=str(toy_data["pairs_eval"]), eval_every_n_steps=2)  # fmt: skip

    full, grown, resumed = LossLog(), LossLog(), LossLog()
    train_mpo(cfg("full"), callbacks=[full])
    train_mpo(cfg("grown", steps=2))
    train_mpo(cfg("grown"), callbacks=[grown])
    with pytest.raises(KeyboardInterrupt):
        train_mpo(cfg("killed"), callbacks=[KillAtStep(3)])
    train_mpo(cfg("killed"), callbacks=[resumed])
    history = json.loads((tmp_path / "full/mpo_history.json").read_text())
    assert [e["step"] for e in history["eval"]] == [0, 2, 4]
    for name, log in (("grown", grown), ("killed", resumed)):
        assert sorted(log.losses) == [3, 4], name
        for step in (3, 4):
            assert log.losses[step] == pytest.approx(full.losses[step], abs=1e-6), (name, step)
        assert max_weight_diff(tmp_path / name, tmp_path / "full") <= 1e-6, name
        other = json.loads((tmp_path / name / "mpo_history.json").read_text())
        assert [e["step"] for e in other["eval"]] == [0, 2, 4], name
        for mine, theirs in zip(other["eval"], history["eval"]):
            assert mine == pytest.approx(theirs, abs=1e-6), (name, mine["step"])
    with pytest.raises(RunFolderError, match=r"max_steps: 4 -> 2 \(the training length may grow, never shrink\)"):
        train_mpo(cfg("grown", steps=2))
