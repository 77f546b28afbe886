"""Each preference reader on its fixture (tests/data_builders/fixtures/reward_data/, written by make_fixtures.py):
the good rows become schema-valid pairs with the right chosen/rejected, the broken ones are counted with their reason."""

import collections
import io
from pathlib import Path

import pytest
from PIL import Image

from common.io import check_row_parsed
from common.schema import RecordError, message_text, validate_preference_record
from data_builders.reward_data.readers import ImageResolver, iter_source_rows

FIXTURES = Path(__file__).parent / "fixtures" / "reward_data"


def read(fmt, path, image_root=None, **options):
    """(valid records, Counter of skip reasons) of one source, as the job's read + validate steps see them."""
    records, reasons = [], collections.Counter()
    for index, (row, convert) in enumerate(
        iter_source_rows(fmt, FIXTURES / path, image_root and FIXTURES / image_root, options)
    ):
        try:
            check_row_parsed(row, index)
            for k, rec in enumerate(convert(row, f"#{index}", options)):
                valid = validate_preference_record({**rec, "id": f"{index}-{k}", "meta": None}, index=index)
                records.append({**valid, "meta": rec["meta"]})
        except RecordError as e:
            reasons[e.reason] += 1
    return records, reasons


def texts(rec):
    return message_text(rec["prompt"]), message_text(rec["chosen"]), message_text(rec["rejected"])


def test_rlaif_v_parquet_with_embedded_images():
    records, reasons = read("rlaif_v", "rlaif_v.parquet")
    assert reasons == {"question: expected a non-empty question string, got ''": 1,
                       "images: cannot decode image": 1}  # fmt: skip
    assert len(records) == 8
    assert texts(records[0]) == ("How many stripes are there?", "There are four stripes.", "There are two stripes.")
    assert records[0]["prompt"][0]["content"][0] == {"type": "image", "text": None}
    assert Image.open(io.BytesIO(records[0]["images"][0]["bytes"])).size == (32, 32)
    assert records[0]["meta"] == {"original_id": 0, "origin": "RLAIF-V"}


def test_vlfeedback_pairs_from_the_rating_gap_with_images_in_a_zip():
    records, reasons = read("vlfeedback", "vlfeedback.jsonl", "vlfeedback_images.zip")
    assert reasons == {"<line>: invalid JSON": 1, "completions: all ratings equal": 1,
                       "completions: unparsable Helpfulness rating": 1, "img_path: cannot open image file": 1}  # fmt: skip
    (best_vs_worst,) = records  # default: one pair per prompt, the best-rated vs the worst-rated completion
    assert texts(best_vs_worst)[1:] == ("A green ring.", "A red square.")
    assert best_vs_worst["meta"]["chosen_rating"] == 5 and best_vs_worst["meta"]["rejected_rating"] == 7 / 3
    # every pair with a gap >= 1.5 on helpfulness alone: ratings a=5, b=4, d=3, c=1
    records, _ = read("vlfeedback", "vlfeedback.jsonl", "vlfeedback_images.zip", aspects=["Helpfulness"],
                      min_gap=1.5, pairs="all")  # fmt: skip
    assert [texts(r)[1:] for r in records] == [("A green ring.", "Green."), ("A green ring.", "A red square."),
                                               ("It is a circle outline.", "A red square."), ("Green.", "A red square.")]  # fmt: skip


def test_llava_critic_recovers_the_pair_from_the_judgement():
    records, reasons = read("llava_critic", "llava_critic.parquet")
    assert reasons == {"conversations: the judgement is a tie": 1, "conversations: no verdict in the judgement": 1,
                       "conversations: no question in the judge prompt (neither 'Question: [' nor '[Question]')": 1}  # fmt: skip
    assert [texts(r) for r in records] == [
        ("How many dots are there?", "Three red dots.", "Two dots."),  # "Answer 2 is better"
        ("Where are the dots?", "Scattered over the image.", "In a line."),  # "[[A]]"
    ]
    assert len(records[0]["images"]) == 1


def test_skywork_message_lists_text_only_and_multi_turn():
    records, reasons = read("skywork", "skywork.jsonl")
    assert reasons == {"chosen: the last message is not the assistant's": 1,
                       "rejected: its prompt turns differ from chosen's": 1, "chosen: the response is empty": 1}  # fmt: skip
    assert len(records) == 3 and all(r["images"] == [] for r in records)
    multi = records[1]
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant", "user"]
    assert texts(multi)[1:] == ("Pear.", "Car.")


def test_mmpr_meta_json_annotations_and_images_in_a_tar():
    records, reasons = read("mmpr", "mmpr/meta.json")
    assert reasons == {"image: cannot open image file": 1,
                       "question: the question has 2 <image> tag(s) but 1 image(s) are given": 1}  # fmt: skip
    assert len(records) == 2
    # the <image> tag places the image: after the text in the second row
    assert [p["type"] for p in records[1]["prompt"][0]["content"]] == ["text", "image"]
    assert records[0]["meta"]["origin"] == "tiny_reasoning"


def test_mapping_of_a_json_array_and_own_schema():
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad", "id": "uid", "chosen_rating": "score_a",
               "rejected_rating": "score_b"}  # fmt: skip
    records, reasons = read("mapping", "mapping.json", columns=columns)
    assert reasons == {"good: expected a string, got NoneType": 1}
    assert texts(records[0]) == ("Translate 'hello' to French.", "Bonjour.", "Hola.")
    assert records[0]["meta"] == {"original_id": "m-0"}
    assert records[1]["meta"] == {"original_id": "m-2", "chosen_rating": 2, "rejected_rating": 2}  # the job: ambiguous
    records, reasons = read("preference", "preference.jsonl")
    assert reasons == {"prompt: expected one of ('system', 'user', 'assistant'), got 'robot'": 1} and len(records) == 1


def test_image_resolver_names_the_missing_member(tmp_path):
    resolver = ImageResolver(FIXTURES / "mmpr" / "images.tar")
    assert resolver("tiny/ring.png", "#0", "image")["path"] == "ring.png"
    with pytest.raises(RecordError, match=r"record #0, field 'image': cannot open image file .*tiny/none.png"):
        resolver("tiny/none.png", "#0", "image")
