"""The build job on changed inputs and bad prompts: a resumed build refuses other prompts or weights at the same
paths, naming them; a base VLM as reward model is refused; image failures are counted with the prompt id; the
correctness rule sees every prompt's ground truth even when the first prompt has none."""

import json
import shutil

import pytest
from PIL import Image

from common.images import ImageError
from common.io import write_records
from common.run_folder import RunFolderError
from common.schema import RecordError
from common.toy_task import make_example, prompt_record
from data_builders.build import build_pairs

from .conftest import ChoiceSampler, HashScorer
from .test_build import make_cfg


class KilledAfter(ChoiceSampler):
    """Dies (like a SIGKILL, nothing caught) on its `n`-th prompt."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def sample(self, prompt, params, seed):
        if len(self.calls) == self.n:
            raise KeyboardInterrupt("killed")
        return super().sample(prompt, params, seed)


def prompts(split, n=8):
    return [prompt_record(make_example(0, split, i, "color")) for i in range(n)]


def test_resume_onto_other_prompts_at_the_same_path_is_refused(tmp_path):
    path = write_records(prompts("a"), tmp_path / "prompts.jsonl")
    cfg = make_cfg(path, tmp_path / "out")  # chunk_size 4: chunk 0 finishes, the kill comes in chunk 1
    with pytest.raises(KeyboardInterrupt):
        build_pairs(cfg, sampler=KilledAfter(5), scorer=HashScorer())
    write_records(prompts("b"), path)  # other prompts, same path
    with pytest.raises(RunFolderError, match=r"input prompts \(.*prompts.jsonl\): other content at the same path"):
        build_pairs(cfg, sampler=ChoiceSampler(), scorer=HashScorer())
    write_records(prompts("a"), path)  # the original prompts again: resumes, redoing only chunk 1
    sampler = ChoiceSampler()
    build_pairs(cfg, sampler=sampler, scorer=HashScorer())
    assert sampler.calls == [p["id"] for p in prompts("a")[4:]]


@pytest.mark.parametrize("which", ["policy", "reward_model"])
def test_resume_onto_changed_weights_is_refused(tiny_vlm_path, tiny_reward_path, toy_data, tmp_path, which):
    policy = shutil.copytree(tiny_vlm_path, tmp_path / "policy")
    reward = shutil.copytree(tiny_reward_path, tmp_path / "reward")
    cfg = make_cfg(toy_data["prompts_eval"], tmp_path / "out", policy, reward, max_prompts=4)
    build_pairs(cfg, sampler=ChoiceSampler(), scorer=HashScorer())
    weights = (policy / "model.safetensors") if which == "policy" else (reward / "value_head.safetensors")
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x01\x02\x03\x04")
    with pytest.raises(RunFolderError, match=rf"input {which} \(.*\): other content at the same path"):
        build_pairs(cfg, sampler=ChoiceSampler(), scorer=HashScorer())


def test_a_base_vlm_as_reward_model_is_refused(tiny_vlm_path, toy_data, tmp_path):
    cfg = make_cfg(toy_data["prompts_eval"], tmp_path / "out", tiny_vlm_path, tiny_vlm_path, max_prompts=4)
    with pytest.raises(FileNotFoundError, match="has no value_head.safetensors"):
        build_pairs(cfg, sampler=ChoiceSampler())  # the scorer is built from reward_model_name_or_path
    assert not (tmp_path / "out").exists()  # refused before the folder was claimed (issue 20)


class ImageFailingSampler(ChoiceSampler):
    def sample(self, prompt, params, seed):
        if prompt["id"] == prompts("a")[2]["id"]:
            raise ImageError("image aspect ratio over 200", "10000x20; Qwen-VL's resize refuses it")
        return super().sample(prompt, params, seed)


def test_image_failures_are_counted_with_the_prompt_id_and_reason(tmp_path):
    rows = prompts("a")
    Image.new("RGB", (10000, 20)).save(tmp_path / "wide.png")
    rows[5]["images"] = ["wide.png"]  # caught when the prompts are read
    path = tmp_path / "prompts.jsonl"
    write_records(rows[:5], path)
    lines = path.read_text().splitlines()
    wide = dict(rows[5], images=["wide.png"])
    path.write_text("\n".join(lines + [json.dumps(wide)]) + "\n")
    pairs = build_pairs(make_cfg(path, tmp_path / "out"), sampler=ImageFailingSampler(), scorer=HashScorer())
    report = json.loads((pairs.parent / "report.json").read_text())
    at_read = report["prompts"]["skipped_at_read"]
    assert at_read["by_reason"] == {"images: image aspect ratio over 200": 1}
    assert at_read["examples"][0].startswith(f"record '{rows[5]['id']}' (#5), field 'images[0]'")
    assert report["prompts"]["without_pairs"] == {"sampling failed: image aspect ratio over 200": 1}
    assert report["prompts"]["failed_examples"] == [
        f"prompt '{rows[2]['id']}': sampling failed: image aspect ratio over 200 (image aspect ratio over 200 "
        "(10000x20; Qwen-VL's resize refuses it))"
    ]
    strict = make_cfg(path, tmp_path / "strict", on_bad_record="raise")
    with pytest.raises(RecordError, match=rf"record '{rows[5]['id']}' \(#5\), field 'images\[0\]': image aspect"):
        build_pairs(strict, sampler=ChoiceSampler(), scorer=HashScorer())


@pytest.mark.parametrize("name", ["prompts.jsonl", "prompts.parquet", "prompts_folder"])
def test_correctness_rule_sees_answers_when_the_first_prompt_has_none(tmp_path, name):
    rows = prompts("a")
    del rows[0]["answer"]
    path = write_records(rows, tmp_path / name)

    class Sampler(ChoiceSampler):
        def sample(self, prompt, params, seed):
            return super().sample({**prompt, "answer": prompt["answer"] or "red"}, params, seed)

    cfg = make_cfg(path, tmp_path / "out", rule="correctness")
    report = json.loads((build_pairs(cfg, sampler=Sampler(), scorer=HashScorer()).parent / "report.json").read_text())
    assert report["prompts"]["with_pairs"] == 7
    assert report["prompts"]["without_pairs"] == {"no ground truth for the correctness rule": 1}
