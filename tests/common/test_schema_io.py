"""Record validation names the record and the field; IO round-trips through JSONL, Parquet and folders."""

import contextlib
import json
import os
import subprocess

import datasets
import pytest
from PIL import Image

from common.io import SkipLog, read_records, write_records
from common.schema import RecordError, validate_preference_record, validate_prompt_record
from common.toy_task import make_example, preference_record


def _pair(**overrides):
    record = {
        "id": "p1",
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}],
        "chosen": [{"role": "assistant", "content": "Red."}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}],
        "images": [Image.new("RGB", (32, 32), "red")],
    }
    record.update(overrides)
    return record


def test_valid_record_is_normalised():
    out = validate_preference_record(_pair(margin=1))
    assert out["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]
    assert out["prompt"][0]["content"][0] == {"type": "image", "text": None}
    assert out["margin"] == 1.0


@pytest.mark.parametrize(
    "overrides, field, problem",
    [
        ({"chosen": [{"role": "assistant", "content": "  "}]}, "chosen", "empty"),
        ({"rejected": "Blue."}, "rejected", "list of messages"),
        ({"images": []}, "images", "1 image placeholder(s) but 0 image(s)"),
        ({"images": ["/no/such/file.png"]}, "images[0]", "image file not found"),
        ({"images": [{"bytes": b"not a png at all", "path": None}]}, "images[0]", "cannot decode image"),
        ({"images": [42]}, "images[0]", "expected a PIL image"),
        ({"id": 7}, "id", "non-empty string"),
        ({"margin": float("nan")}, "margin", "finite number"),
        ({"prompt": [{"role": "robot", "content": "hi"}]}, "prompt[0].role", "expected one of"),
        ({"prompt": [{"role": "user", "content": [{"type": "audio"}]}]}, "prompt[0].content[0]", "expected"),
    ],
)
def test_bad_records_name_record_and_field(overrides, field, problem):
    with pytest.raises(RecordError) as err:
        validate_preference_record(_pair(**overrides), index=3)
    assert err.value.field == field
    assert problem in err.value.problem
    assert str(err.value).startswith(f"record {err.value.record_ref}, field '{field}'")
    assert "#3" in str(err.value)


def test_missing_field_and_missing_id():
    record = _pair()
    del record["chosen"]
    with pytest.raises(RecordError, match=r"record 'p1' \(#0\), field 'chosen': missing"):
        validate_preference_record(record, index=0)
    record = _pair()
    del record["id"]
    with pytest.raises(RecordError, match=r"record #5, field 'id'"):
        validate_preference_record(record, index=5)


def test_prompt_record_checks():
    ok = validate_prompt_record({"id": "q", "prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"})
    assert ok["images"] == []
    with pytest.raises(RecordError, match="'answer'"):
        validate_prompt_record({"id": "q", "prompt": [{"role": "user", "content": "2+2?"}], "answer": 4})


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.parquet", "pairs_folder"])
def test_round_trip(tmp_path, name):
    records = [preference_record(make_example(0, "t", i, k)) for i in range(3) for k in ("color", "sum")]
    path = write_records(records, tmp_path / name)
    ds = read_records(path)
    assert ds["id"] == [r["id"] for r in records]
    for original, row in zip(records, ds):
        assert row["chosen"][0]["content"][0]["text"] == original["chosen"][0]["content"][0]["text"]
        assert len(row["images"]) == len(original["images"])
        for a, b in zip(original["images"], row["images"]):
            assert list(a.convert("RGB").getdata()) == list(b.convert("RGB").getdata())  # lossless
    # and it reads back what it wrote in another format
    again = read_records(write_records(ds, tmp_path / f"again_{name}"))
    assert again["id"] == ds["id"]


def test_jsonl_reader_resolves_relative_paths_and_skips_bad_records(tmp_path):
    Image.new("RGB", (28, 28), "blue").save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    good = _pair(images=["ok.png"])
    lines = [good, _pair(id="p2", images=["bad.png"]), _pair(id="p3", images=["gone.png"]), {**good, "id": "p4"}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n{not json\n")
    with pytest.raises(RecordError, match=r"record 'p2' \(#1\), field 'images\[0\]'"):
        read_records(path)
    skipped = SkipLog()
    ds = read_records(path, on_bad_record="skip", skipped=skipped)
    assert ds["id"] == ["p1", "p4"]
    assert skipped.total == 3
    assert skipped.counts["images: cannot decode image"] == 1
    assert skipped.counts["images: image file not found"] == 1
    assert skipped.counts["<line>: invalid JSON"] == 1


def test_text_only_records(tmp_path):
    records = [preference_record(make_example(0, "t", i, "sum")) for i in range(2)]
    ds = read_records(write_records(records, tmp_path / "text"))
    assert ds["images"] == [[], []]


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@contextlib.contextmanager
def _read_only(folder):
    """`folder` on a really read-only filesystem: a read-only bind mount as root (chmod does not stop root), the
    write bits removed otherwise. Skips, saying why, when root cannot mount here."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield folder
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    view = folder.with_name(folder.name + "-ro")
    view.mkdir()
    for cmd in (["mount", "--bind", str(folder), str(view)], ["mount", "-o", "remount,ro,bind", str(view)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            subprocess.run(["umount", str(view)], capture_output=True, timeout=30)
            pytest.skip(f"root cannot make a read-only bind mount here ({' '.join(cmd)}: {proc.stderr.strip()})")
    try:
        with pytest.raises(OSError, match="Read-only file system"):
            (view / "probe").write_text("x")
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True, timeout=30)


@pytest.mark.parametrize("layout", ["dataset", "dataset_dict"])
def test_reading_a_datasets_folder_never_writes_beside_the_data(tmp_path, layout):
    """Reading used to cast the image columns with `cast_column`, which writes a `cache-*.arrow` file into the
    user's data folder: a crash (errno 30) on read-only data and litter on writable data."""
    records = [preference_record(make_example(0, "t", i, k)) for i in range(3) for k in ("color", "sum")]
    ds = read_records(write_records(records, tmp_path / "staging"))
    data = tmp_path / "data"
    (datasets.DatasetDict({"train": ds}) if layout == "dataset_dict" else ds).save_to_disk(str(data))
    before = _listing(data)
    assert read_records(data)["id"] == [r["id"] for r in records]
    assert _listing(data) == before  # no cache-*.arrow left in the user's folder
    with _read_only(data) as view:
        again = read_records(view)
        assert again["id"] == [r["id"] for r in records]
        assert [len(x) for x in again["images"]] == [len(r["images"]) for r in records]
    assert _listing(data) == before
