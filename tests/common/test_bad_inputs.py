"""Each class of bad input is caught when records are read: a named error with on_bad_record="raise", a counted skip
with "skip". Optional fields survive when the first record lacks them, through every write/read path."""

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from common.images import ImageError, check_image, load_image
from common.io import SkipLog, read_records, write_records
from common.schema import RecordError
from common.toy_task import make_example, preference_record, prompt_record


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says `width` x `height`: a decompression bomb's header without its payload."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _pair(rid, text="What color is the shape?", images=("ok.png",), chosen="It is red."):
    return {
        "id": rid,
        "prompt": [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": "It is blue."}],
        "images": list(images),
    }


@pytest.fixture
def image_dir(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    (tmp_path / "bomb.png").write_bytes(png_claiming_size(20000, 20000))
    Image.new("RGB", (10000, 20), "red").save(tmp_path / "wide.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    return tmp_path


# (bad record, field, problem): one of each class, each among good records in a JSONL file
BAD = {
    "decompression bomb 20000x20000": (_pair("bomb", images=["bomb.png"]), "images[0]", "image has too many pixels"),
    "aspect ratio 500": (_pair("wide", images=["wide.png"]), "images[0]", "image aspect ratio over 200"),
    "corrupt bytes": (_pair("corrupt", images=["corrupt.png"]), "images[0]", "cannot decode image"),
    "truncated file": (_pair("truncated", images=["truncated.png"]), "images[0]", "cannot decode image"),
    "missing file": (_pair("missing", images=["gone.png"]), "images[0]", "image file not found"),
    "image_pad token in prompt": (_pair("pad", text="Look: <|image_pad|> what color?"), "prompt[0].content[1].text",
                                  "text contains a vision special token"),
    "vision_start token in response": (_pair("vs", chosen="It is <|vision_start|>red"), "chosen[0].content",
                                       "text contains a vision special token"),
    "video_pad token in prompt": (_pair("vp", text="<|video_pad|>"), "prompt[0].content[1].text",
                                  "text contains a vision special token"),
    "lone surrogate": (_pair("sur", text="Smile \ud83d please"), "prompt[0].content[1].text",
                       "text is not valid Unicode"),
    "empty prompt": (_pair("empty", text="", images=()), "prompt[0]", "the user turn is empty (no text, no image)"),
    "blank prompt": (_pair("blank", text=" \n", images=()), "prompt[0]", "the user turn is empty (no text, no image)"),
    "empty string prompt": ({**_pair("str", images=()), "prompt": [{"role": "user", "content": ""}]}, "prompt[0]",
                            "the user turn is empty (no text, no image)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_input_class_is_named_or_counted(image_dir, case):
    bad, field, problem = BAD[case]
    path = image_dir / "data.jsonl"
    lines = [_pair("good-1"), bad, _pair("good-2")]
    # json.dumps writes a lone surrogate as the escape "\ud83d": valid JSON, invalid Unicode
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(RecordError) as err:
        read_records(path)
    assert err.value.field == field and err.value.problem == problem
    assert str(err.value).startswith(f"record '{bad['id']}' (#1), field '{field}': {problem}")
    skipped = SkipLog()
    ds = read_records(path, on_bad_record="skip", skipped=skipped)
    assert ds["id"] == ["good-1", "good-2"]
    assert dict(skipped.counts) == {f"{field.split('[')[0].split('.')[0]}: {problem}": 1}
    assert skipped.examples[0].startswith(f"record '{bad['id']}'")


def test_image_checks_on_every_form(image_dir):
    bomb = (image_dir / "bomb.png").read_bytes()
    for form in (str(image_dir / "bomb.png"), {"bytes": bomb, "path": None}, {"bytes": None, "path": "bomb.png"}):
        for fn in (check_image, load_image):
            with pytest.raises(ImageError, match="20000x20000 = 400000000 pixels > 100000000"):
                fn(form, base_dir=str(image_dir))
    with pytest.raises(ImageError, match="too many pixels"):  # the limit is configurable
        load_image(Image.new("RGB", (32, 32)), max_image_pixels=1000)
    with pytest.raises(ImageError, match="aspect ratio over 200"):
        load_image(Image.new("RGB", (1, 300)))
    assert load_image("ok.png", base_dir=str(image_dir)).size == (32, 32)
    assert check_image("ok.png", base_dir=str(image_dir)) == str(image_dir / "ok.png")


def test_a_byte_order_mark_is_read(image_dir):
    path = image_dir / "bom.jsonl"
    path.write_bytes("\ufeff".encode() + "".join(json.dumps(_pair(f"p{i}")) + "\n" for i in range(2)).encode())
    assert read_records(path)["id"] == ["p0", "p1"]


def test_prompt_fields_are_checked(image_dir):
    path = image_dir / "prompts.jsonl"
    question = [{"role": "user", "content": "Two plus two?"}]
    rows = [{"id": "q0", "prompt": question, "choices": ["four", 4]},
            {"id": "q1", "prompt": question, "answer": "four <|vision_end|>"},
            {"id": "q2", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""}]},
            {"id": "q3", "prompt": [{"role": "system", "content": ""}, {"role": "user", "content": "Two?"}]}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    skipped = SkipLog()
    assert read_records(path, "prompt", on_bad_record="skip", skipped=skipped)["id"] == ["q3"]
    assert dict(skipped.counts) == {"choices: expected a list of strings": 1,
                                    "answer: text contains a vision special token": 1,
                                    "prompt: the user turn is empty (no text, no image)": 1}  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    with pytest.raises(RecordError, match=r"record 'q2' \(#0\), field 'prompt\[1\]': the user turn is empty"):
        read_records(path, "prompt")


FORMATS = ["data.jsonl", "data.parquet", "data_folder"]


@pytest.mark.parametrize("name", FORMATS)
def test_optional_fields_missing_on_the_first_record_survive(tmp_path, name):
    pairs = [preference_record(make_example(0, "t", i, "color")) for i in range(4)]
    for i, rec in enumerate(pairs[1:], 1):
        rec.update(margin=float(i), chosen_score=0.5 + i, meta=json.dumps({"k": i}))
    prompts = [prompt_record(make_example(0, "t", i, "color")) for i in range(4)]
    del prompts[0]["answer"], prompts[0]["choices"]
    for records, kind in ((pairs, "preference"), (prompts, "prompt")):
        path = write_records(records, tmp_path / f"{kind}-{name}")
        ds = read_records(path, kind)
        again = read_records(write_records(ds, tmp_path / f"again-{kind}-{name}"), kind)  # and from a Dataset
        for got in (ds, again):
            if kind == "preference":
                assert got["margin"] == [None, 1.0, 2.0, 3.0]
                assert got["chosen_score"] == [None, 1.5, 2.5, 3.5]
                assert got["meta"] == [None] + [json.dumps({"k": i}) for i in (1, 2, 3)]
            else:
                assert got["answer"] == [None] + [p["answer"] for p in prompts[1:]]
                assert got["choices"] == [None] + [p["choices"] for p in prompts[1:]]
