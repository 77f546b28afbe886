"""The policy-benchmark readers on fixtures in the hub layouts: rows, prompts, images, bad rows, split filtering."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.io import SkipLog
from common.schema import RecordError
from policy_eval import BENCHMARKS, read_benchmark, shards
from tests.policy_eval import hub_fixtures as hf

SIZES = {"mmstar": 6, "mmmu_val": 5, "mathvista_testmini": 6, "ai2d": 4}  # rows of the evaluation split
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _color(image) -> tuple:
    with Image.open(io.BytesIO(image["bytes"])) as im:
        return im.convert("RGB").getpixel((0, 0))


def test_fixtures_have_the_hub_arrow_types(hub_data):
    """What the dataset cards declare: Image -> struct<bytes, path>, sequences -> list<string>, metadata struct."""
    mmstar = pq.read_schema(hub_data["mmstar"] / "mmstar.parquet")
    assert mmstar.field("image").type == IMAGE and mmstar.field("index").type == pa.int64()
    assert mmstar.field("meta_info").type == pa.struct([(k, pa.string()) for k in ("source", "split", "image_path")])
    mmmu = pq.read_schema(hub_data["mmmu_val"] / "Accounting" / "validation-00000-of-00001.parquet")
    assert (
        all(mmmu.field(f"image_{k}").type == IMAGE for k in range(1, 8)) and mmmu.field("options").type == pa.string()
    )
    (testmini,) = (hub_data["mathvista_testmini"] / "data").glob("testmini-*.parquet")
    mathvista = pq.read_schema(testmini)
    assert mathvista.field("decoded_image").type == IMAGE and mathvista.field("image").type == pa.string()
    assert (
        mathvista.field("choices").type == pa.list_(pa.string()) and mathvista.field("precision").type == pa.float64()
    )
    assert mathvista.field("metadata").type.field("skills").type == pa.list_(pa.string())
    ai2d = pq.read_schema(hub_data["ai2d"] / "data" / "test-00000-of-00001.parquet")
    assert ai2d.field("options").type == pa.list_(pa.string()) and ai2d.field("image").type == IMAGE


@pytest.mark.parametrize("name", ["mmstar", "mmmu_val", "mathvista_testmini", "ai2d"])
def test_each_reader_reads_the_evaluation_split_only(hub_data, name):
    items = read_benchmark(name, hub_data[name])
    assert len(items) == SIZES[name]  # MMMU's dev shard and MathVista's test shard are left out
    assert all(it.record["source"] == BENCHMARKS[name].__name__.split(".")[-1] for it in items)
    assert all(it.record["images"] and isinstance(it.record["images"][0]["bytes"], bytes) for it in items)


def test_multiple_choice_records_carry_letter_answers_and_option_texts(hub_data):
    mmstar = read_benchmark("mmstar", hub_data["mmstar"])[0].record
    assert mmstar["answer"] == "A" and mmstar["choices"] == ["a red cup", "a blue cup", "a green cup", "no cup, at all"]
    text = mmstar["prompt"][0]["content"][-1]["text"]
    assert text.endswith("Answer with the option's letter from the given choices directly.")
    ai2d = read_benchmark("ai2d", hub_data["ai2d"])[0].record
    assert ai2d["answer"] == "B" and "A. leaf\nB. root\nC. stem\nD. flower" in ai2d["prompt"][0]["content"][-1]["text"]
    mathvista = {it.record["id"]: it for it in read_benchmark("mathvista_testmini", hub_data["mathvista_testmini"])}
    assert mathvista["mathvista-1"].record["choices"] == ["30°", "45°", "60°", "90°"]
    assert mathvista["mathvista-3"].record.get("choices") is None and mathvista["mathvista-3"].fields["precision"] == 2


def test_mmmu_images_go_where_their_placeholders_are_in_order_of_mention(hub_data):
    items = {it.record["id"]: it for it in read_benchmark("mmmu_val", hub_data["mmmu_val"])}
    art = items["validation_Art_1"].record  # "Which style? <image 2> is a detail of <image 1>; <image 2> again."
    kinds = [part["type"] for part in art["prompt"][0]["content"]]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert [_color(im) for im in art["images"]] == [(120, 30, 200), (60, 30, 200)]  # image_2 first, then image_1
    assert "<image 2> again" in art["prompt"][0]["content"][-1]["text"]  # a later mention stays text
    assert "A. Gothic\nB. Renaissance" in art["prompt"][0]["content"][-1]["text"]
    assert (
        items["validation_Math_2"].record["answer"] == "['0.5', '1/2']"
        and items["validation_Math_2"].record.get("choices") is None
    )
    assert items["validation_Math_1"].fields == {"domain": "Science", "subject": "Math",
                                                 "question_type": "multiple-choice", "topic_difficulty": "Hard"}  # fmt: skip


BAD_ROWS = {  # benchmark -> (writer's rows edit, field named in the error)
    "mmstar": (lambda rows: rows[2].update(answer="E"), "answer"),
    "mmmu_val": (lambda rows: rows[0].update(question="See <image 3>."), "image_3"),
    "mathvista_testmini": (lambda rows: rows[0].update(answer="50°"), "choices"),
    "ai2d": (lambda rows: rows[1].update(answer="7"), "answer"),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_a_malformed_row_is_a_named_error_or_a_counted_skip(tmp_path, monkeypatch, name):
    edit, field = BAD_ROWS[name]
    real_write, edited = hf._write, []

    def write_with_a_bad_row(rows, features, path):  # one bad row, in the first evaluation-split shard written
        if not edited and not path.name.startswith(("dev-", "test-00000-of-00002")):
            edit(rows)
            edited.append(path)
        real_write(rows, features, path)

    monkeypatch.setattr(hf, "_write", write_with_a_bad_row)
    write, folder = hf.WRITERS[name]
    root = write(tmp_path / folder)
    with pytest.raises(RecordError, match=rf"field '{field}'"):
        read_benchmark(name, root)
    skipped = SkipLog()
    items = read_benchmark(name, root, on_bad_record="skip", skipped=skipped)
    assert skipped.total == 1 and next(iter(skipped.counts)).startswith(f"{field}:")
    assert len(items) == SIZES[name] - 1


def test_a_hub_id_is_fetched_with_only_the_split_shards(hub_data, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.append((repo_id, kw)) or str(hub_data["mathvista_testmini"]))  # fmt: skip
    (found,) = shards("mathvista_testmini", "AI4Math/MathVista")
    assert found.name.startswith("testmini-")
    assert calls == [("AI4Math/MathVista", {"repo_type": "dataset",
                                            "allow_patterns": ["testmini-*.parquet", "**/testmini-*.parquet"]})]  # fmt: skip


def test_missing_data_and_unknown_benchmark_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mmstar: no such file or folder"):
        read_benchmark("mmstar", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no testmini-\*\.parquet file under"):
        read_benchmark("mathvista_testmini", tmp_path)
    with pytest.raises(ValueError, match="unknown policy benchmark 'mmbench'"):
        read_benchmark("mmbench", tmp_path)


def test_mmmu_images_nobody_mentions_go_first_and_a_mention_of_an_empty_image_is_named():
    from policy_eval.mmmu import _place_images

    row = {"image_1": "one", "image_2": None, "image_3": "three"}
    text, images = _place_images("Look at <image 1>.", row, "'x' (#0)")
    assert text == "Look at <image>." and images == ["three", "one"]  # untagged image_3 first, as user_messages puts it
    with pytest.raises(RecordError, match=r"field 'image_2': the text mentions <image 2> but image_2 is empty"):
        _place_images("<image 2>", row, "'x' (#0)")
