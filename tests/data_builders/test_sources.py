"""Prompt readers: each format's prompt side, auto-detection, per-record errors and counted skips."""

import io
import json

import datasets
import pytest
from PIL import Image

from common.io import SkipLog
from common.schema import RecordError
from data_builders.sources import read_prompts


def png_bytes(color="red"):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def texts(record):
    return [p["text"] for p in record["prompt"][0]["content"] if p["type"] == "text"]


def kinds(record):
    return [p["type"] for p in record["prompt"][0]["content"]]


def test_toy_prompt_records(toy_data):
    skipped = SkipLog()
    ds = read_prompts(toy_data["prompts_eval"], skipped=skipped)  # auto -> "prompt"
    assert len(ds) == 16 and skipped.total == 0
    row = ds[0]
    assert row["answer"] and row["choices"] and row["source"].startswith("toy/")
    assert isinstance(row["images"][0], Image.Image)


def test_plain_jsonl_with_bad_records_counted(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "img" / "a.png")
    rows = [
        {"id": "q1", "question": "What color?", "image": "img/a.png", "answer": "blue"},
        {"id": "q2", "question": "Two plus two?"},  # text only
        {"id": "q3", "question": "Missing image?", "image": "img/missing.png"},
        {"id": "q4", "image": "img/a.png"},  # no question
        "{not json",
        {"id": "q1", "question": "Duplicate id", "image": "img/a.png"},
        {"question": "<image>\nTagged, no id", "images": ["img/a.png"]},
    ]
    path = write_jsonl(tmp_path / "plain.jsonl", rows)
    skipped = SkipLog()
    ds = read_prompts(path, "plain", skipped=skipped)
    assert ds["id"] == ["q1", "q2", "plain-0000006"]
    assert ds[0]["answer"] == "blue" and kinds(ds[0]) == ["image", "text"] and len(ds[0]["images"]) == 1
    assert ds[1]["images"] == [] and texts(ds[1]) == ["Two plus two?"]
    assert texts(ds[2]) == ["Tagged, no id"]
    assert skipped.counts == {"images: image file not found": 1,
                              "question: expected a non-empty question string, got None": 1,
                              "<line>: invalid JSON": 1, "id: duplicate prompt id": 1}  # fmt: skip
    with pytest.raises(RecordError, match=r"record 'q3' \(#2\), field 'images\[0\]': image file not found"):
        read_prompts(path, "plain", on_bad_record="raise")
    assert len(read_prompts(path, "plain", max_prompts=2, skipped=SkipLog())) == 2


def test_a_prompts_judge_is_kept_and_an_unknown_one_counted(tmp_path):
    rows = [
        {"id": "c1", "question": "Bar value?", "answer": "21", "source": "charts", "judge": "relaxed_numeric"},
        {"id": "c2", "question": "Bar value?", "answer": "21"},
        {"id": "c3", "question": "Bar value?", "answer": "21", "judge": "relaxed"},
    ]
    skipped = SkipLog()
    ds = read_prompts(write_jsonl(tmp_path / "p.jsonl", rows), "plain", skipped=skipped)
    assert ds["id"] == ["c1", "c2"] and ds["judge"] == ["relaxed_numeric", None]
    assert skipped.counts == {
        "judge: unknown judge 'relaxed'; registered judges: ai2d, default, mathvista, mmmu, mmstar, relaxed_numeric": 1
    }


def test_rlaif_v_parquet_auto(tmp_path):
    ds = datasets.Dataset.from_dict({
        "ds_name": ["OmniLMM", "OmniLMM"], "image": [{"bytes": png_bytes(), "path": None}, {"bytes": b"junk", "path": None}],
        "question": ["Describe the image.", "And this one?"], "chosen": ["c", "c"], "rejected": ["r", "r"],
        "origin_dataset": ["VQAv2", "VQAv2"], "idx": [11, 12],
    }).cast_column("image", datasets.Image())  # fmt: skip
    ds.to_parquet(str(tmp_path / "rlaif.parquet"))
    skipped = SkipLog()
    out = read_prompts(tmp_path / "rlaif.parquet", skipped=skipped)
    assert out["id"] == ["11"] and out[0]["source"] == "rlaif_v/OmniLMM" and kinds(out[0]) == ["image", "text"]
    assert isinstance(out[0]["images"][0], Image.Image) and out[0]["images"][0].size == (32, 32)
    assert skipped.counts == {"images: cannot decode image": 1}


def test_vlfeedback_jsonl_with_image_root(tmp_path):
    root = tmp_path / "merged_images"
    root.mkdir()
    Image.new("RGB", (32, 32), "green").save(root / "svit-1.jpg")
    row = {"id": "svit-1", "prompt": "What is shown?", "models": ["m1", "m2"], "img_path": "svit-1.jpg",
           "completions": [{"model": "m1", "response": "x", "annotations": {}}]}  # fmt: skip
    out = read_prompts(write_jsonl(tmp_path / "vlf.jsonl", [row]), image_root=str(root), skipped=SkipLog())
    assert out["id"] == ["svit-1"] and out[0]["source"] == "vlfeedback" and texts(out[0]) == ["What is shown?"]
    assert out[0].get("answer") is None and len(out[0]["images"]) == 1


def test_mmpr_image_tags_and_lists(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg")
    Image.new("RGB", (32, 32)).save(tmp_path / "b.jpg")
    rows = [
        {"image": "a.jpg", "question": "<image>\nWhat is it?", "chosen": "c", "rejected": "r"},
        {"image": ["a.jpg", "b.jpg"], "question": "Compare <image> with <image> please.", "chosen": "c",
         "rejected": "r"},
        {"image": "a.jpg", "question": "<image><image> too many tags", "chosen": "c", "rejected": "r"},
    ]  # fmt: skip
    skipped = SkipLog()
    out = read_prompts(write_jsonl(tmp_path / "mmpr.jsonl", rows), skipped=skipped)
    assert kinds(out[0]) == ["image", "text"] and texts(out[0]) == ["What is it?"]
    assert kinds(out[1]) == ["text", "image", "text", "image", "text"] and len(out[1]["images"]) == 2
    assert skipped.counts == {"question: the question has 2 <image> tag(s) but 1 image(s) are given": 1}


def test_vl_rewardbench_keeps_ground_truth(tmp_path):
    ds = datasets.Dataset.from_dict({
        "id": ["mathverse_1", "RLAIF-V_2"], "query": ["Solve it.", "Describe."], "response": [["a", "b"], ["c", "d"]],
        "image": [{"bytes": png_bytes(), "path": None}] * 2, "human_ranking": [[0, 1], [1, 0]],
        "query_source": ["mathverse", "rlaif-v"], "ground_truth": ["42", ""],
    }).cast_column("image", datasets.Image())  # fmt: skip
    ds.save_to_disk(str(tmp_path / "vlrb"))
    out = read_prompts(tmp_path / "vlrb", skipped=SkipLog())
    assert out["id"] == ["mathverse_1", "RLAIF-V_2"] and out["answer"] == ["42", None]
    assert out["source"] == ["vl_rewardbench/mathverse", "vl_rewardbench/rlaif-v"]


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown prompt format"):
        read_prompts(tmp_path, "csv")
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "nope.jsonl")
