"""Writes a few rows of each policy benchmark in its hub layout (files, columns, Arrow types, embedded images), with
scripted responses whose verdicts are counted by hand below.

    python tests/policy_eval/hub_fixtures.py OUT_DIR    # -> OUT_DIR/{MMStar,MMMU,MathVista,ai2d}

Layouts, from the dataset cards (`dataset_info.features`) and repository trees: Lin-Chen/MMStar (`mmstar.parquet`),
MMMU/MMMU (`<Subject>/{dev,validation}-00000-of-00001.parquet`), AI4Math/MathVista
(`data/{testmini,test}-0000k-of-0000n-<hash>.parquet`), lmms-lab/ai2d (`data/test-00000-of-00001.parquet`). Images
are `datasets.Image` columns: Arrow struct<bytes: binary, path: string>, as the hub stores them. Each benchmark also
gets a shard of another split (MMMU dev, MathVista test) that the readers must leave out.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import datasets
from datasets import Features, Image, Sequence, Value
from PIL import Image as PILImage

S = Value("string")


def png(color: tuple[int, int, int], size: int = 56) -> dict:
    buf = io.BytesIO()
    PILImage.new("RGB", (size, size), color).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _write(rows: list[dict], features: Features, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {name: [row.get(name) for row in rows] for name in features}
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))


# > MMStar
MMSTAR_FEATURES = Features({"index": Value("int64"), "question": S, "image": Image(), "answer": S, "category": S,
                            "l2_category": S, "meta_info": {"source": S, "split": S, "image_path": S}})  # fmt: skip
MMSTAR_ROWS = [  # (answer, category, l2_category, scripted response, its verdict)
    ("A", "coarse perception", "image scene and topic", "<think>Maybe (B)... no.</think> The answer is (A).", True),
    ("B", "coarse perception", "image emotion", "A", False),
    ("C", "math", "geometry", "The angle is 30 degrees, so the answer is C.", True),
    ("D", "math", "geometry", "I cannot tell.", False),
    ("B", "logical reasoning", "diagram reasoning", "(B)", True),
    ("A", "logical reasoning", "diagram reasoning", "Options A and B both look plausible, but B is right.", False),
]
MMSTAR_EXPECTED = {"overall": 3 / 6, "category": {"coarse perception": 1 / 2, "math": 1 / 2, "logical reasoning": 1 / 2},
                   "l2_category": {"image scene and topic": 1.0, "image emotion": 0.0, "geometry": 1 / 2,
                                   "diagram reasoning": 1 / 2}}  # fmt: skip


def write_mmstar(root: Path) -> Path:
    rows = [{"index": i, "image": png((40 * i, 90, 160)), "answer": answer, "category": cat, "l2_category": l2,
             "question": f"Which one fits picture {i}?\nOptions: A: a red cup, B: a blue cup, C: a green cup, "
                         "D: no cup, at all",
             "meta_info": {"source": "MMBench", "split": "val", "image_path": f"images/{i}.jpg"}}
            for i, (answer, cat, l2, _, _) in enumerate(MMSTAR_ROWS)]  # fmt: skip
    _write(rows, MMSTAR_FEATURES, root / "mmstar.parquet")
    return root


MMSTAR_SCRIPT = {f"mmstar-{i}": row[3] for i, row in enumerate(MMSTAR_ROWS)}

# > MMMU
MMMU_FEATURES = Features({"id": S, "question": S, "options": S, "explanation": S,
                          **{f"image_{k}": Image() for k in range(1, 8)}, "img_type": S, "answer": S,
                          "topic_difficulty": S, "question_type": S, "subfield": S})  # fmt: skip
MMMU_ROWS = [  # (id, question, options, answer, images, difficulty, scripted response, its verdict)
    (
        "validation_Accounting_1",
        "What is the cost shown in <image 1>?",
        "['$6', '$7', '$8', '$9']",
        "B",
        1,
        "Easy",
        "The cost is $7, so the answer is (B).",
        True,
    ),
    (
        "validation_Accounting_2",
        "<image 1> Compute the total revenue.",
        "[]",
        "1200",
        1,
        "Medium",
        "Revenue = 400 * 3 = 1,200",
        True,
    ),
    (
        "validation_Math_1",
        "Compare <image 1> and <image 2>. Which is larger?",
        "['1', '2', '3']",
        "C",
        2,
        "Hard",
        "<think>Compare sizes.</think>A",
        False,
    ),
    (
        "validation_Math_2",
        "What is the probability in <image 1>?",
        "[]",
        "['0.5', '1/2']",
        1,
        "Medium",
        "The probability is 0.5.",
        True,
    ),
    (
        "validation_Art_1",
        "Which style? <image 2> is a detail of <image 1>; <image 2> again.",
        "['Gothic', 'Renaissance', 'Rococo', 'Baroque']",
        "D",
        2,
        "Easy",
        "I think the style here is Baroque.",
        True,
    ),
]
MMMU_EXPECTED = {"overall": 4 / 5,
                 "domain": {"Business": 1.0, "Science": 1 / 2, "Art and Design": 1.0},
                 "question_type": {"multiple-choice": 2 / 3, "open": 1.0},
                 "topic_difficulty": {"Easy": 1.0, "Medium": 1.0, "Hard": 0.0}}  # fmt: skip


def write_mmmu(root: Path) -> Path:
    by_subject: dict[str, list[dict]] = {}
    for rid, question, options, answer, n_images, difficulty, _, _ in MMMU_ROWS:
        row = {"id": rid, "question": question, "options": options, "explanation": "", "answer": answer,
               "img_type": "['Diagrams']", "topic_difficulty": difficulty, "subfield": "x",
               "question_type": "open" if options == "[]" else "multiple-choice",
               **{f"image_{k}": png((60 * k, 30, 200)) for k in range(1, n_images + 1)}}  # fmt: skip
        by_subject.setdefault(rid.split("_")[1], []).append(row)
    for subject, rows in by_subject.items():
        _write(rows, MMMU_FEATURES, root / subject / "validation-00000-of-00001.parquet")
    dev = {**by_subject["Accounting"][0], "id": "dev_Accounting_1"}  # another split: must not be read
    _write([dev], MMMU_FEATURES, root / "Accounting" / "dev-00000-of-00001.parquet")
    return root


MMMU_SCRIPT = {row[0]: row[6] for row in MMMU_ROWS}

# > MathVista
MATHVISTA_FEATURES = Features({
    "pid": S, "question": S, "image": S, "decoded_image": Image(), "choices": Sequence(S), "unit": S,
    "precision": Value("float64"), "answer": S, "question_type": S, "answer_type": S,
    "metadata": {"category": S, "context": S, "grade": S, "img_height": Value("int64"), "img_width": Value("int64"),
                 "language": S, "skills": Sequence(S), "source": S, "split": S, "task": S},
    "query": S})  # fmt: skip
MATHVISTA_ROWS = [  # (choices, unit, precision, answer, answer_type, skills, language, scripted response, verdict)
    (
        ["30°", "45°", "60°", "90°"],
        None,
        None,
        "45°",
        "text",
        ["geometry reasoning", "algebraic reasoning"],
        "english",
        "<think>Angle ABC is 30° plus 15°.</think>\\boxed{45°}",
        True,
    ),
    (
        None,
        None,
        None,
        "7",
        "integer",
        ["arithmetic reasoning"],
        "english",
        "There are 7 apples, wait no, 8 apples. The answer is 8.",
        False,
    ),
    (
        None,
        "cm",
        2.0,
        "1.45",
        "float",
        ["algebraic reasoning"],
        "english",
        "The length is about 1.449 cm. Answer: 1.449 cm",
        True,
    ),
    (
        None,
        None,
        1.0,
        "0.5",
        "float",
        ["statistical reasoning", "arithmetic reasoning"],
        "chinese",
        "The answer is 0.54",
        True,
    ),
    (None, None, None, "[2, 4, 6]", "list", ["arithmetic reasoning"], "english", "Answer: 2, 4, 6", True),
    (["yes", "no"], None, None, "no", "text", ["logical reasoning"], "english", "Answer: (A)", False),
]
MATHVISTA_EXPECTED = {"overall": 4 / 6,
                      "question_type": {"multi_choice": 1 / 2, "free_form": 3 / 4},
                      "answer_type": {"text": 1 / 2, "integer": 0.0, "float": 1.0, "list": 1.0},
                      "language": {"english": 3 / 5, "chinese": 1.0},
                      "skills": {"geometry reasoning": 1.0, "algebraic reasoning": 1.0, "arithmetic reasoning": 2 / 3,
                                 "statistical reasoning": 1.0, "logical reasoning": 0.0}}  # fmt: skip


def write_mathvista(root: Path) -> Path:
    rows = []
    for i, (choices, unit, precision, answer, answer_type, skills, language, _, _) in enumerate(MATHVISTA_ROWS, 1):
        question = f"Question {i}?"
        rows.append({"pid": str(i), "question": question, "image": f"images/{i}.jpg", "decoded_image": png((30 * i, 200, 90)),
                     "choices": choices, "unit": unit, "precision": precision, "answer": answer,
                     "question_type": "multi_choice" if choices else "free_form", "answer_type": answer_type,
                     "metadata": {"category": "math-targeted-vqa", "context": "geometry diagram", "grade": "high school",
                                  "img_height": 56, "img_width": 56, "language": language, "skills": skills,
                                  "source": "Geometry3K", "split": "testmini", "task": "geometry problem solving"},
                     "query": f"Hint: Please answer the question and provide the final answer at the end.\n"
                              f"Question: {question}"})  # fmt: skip
    _write(rows, MATHVISTA_FEATURES, root / "data" / "testmini-00000-of-00001-725687bf7a18d64b.parquet")
    test = {**rows[0], "pid": "1001", "answer": None}  # the test split has no answers: must not be read
    _write([test], MATHVISTA_FEATURES, root / "data" / "test-00000-of-00002-6b81bd7f7e2065e6.parquet")
    return root


MATHVISTA_SCRIPT = {f"mathvista-{i}": row[7] for i, row in enumerate(MATHVISTA_ROWS, 1)}

# > AI2D
AI2D_FEATURES = Features({"question": S, "options": Sequence(S), "answer": S, "image": Image()})
AI2D_ROWS = [  # (options, answer index, scripted response, its verdict)
    (["leaf", "root", "stem", "flower"], "1", "B", True),
    (["sun", "moon", "earth"], "0", "The sun gives plants energy; so it is the sun.", True),
    (["2", "4", "6", "8"], "2", "(D) 8", False),
    (["cell", "tissue"], "1", "", False),
]
AI2D_EXPECTED = {"overall": 2 / 4}


def write_ai2d(root: Path) -> Path:
    rows = [{"question": f"Diagram question {i}?", "options": options, "answer": answer, "image": png((90, 30 * i, 60))}
            for i, (options, answer, _, _) in enumerate(AI2D_ROWS)]  # fmt: skip
    _write(rows, AI2D_FEATURES, root / "data" / "test-00000-of-00001.parquet")
    return root


AI2D_SCRIPT = {f"ai2d-{i}": row[2] for i, row in enumerate(AI2D_ROWS)}

WRITERS = {"mmstar": (write_mmstar, "MMStar"), "mmmu_val": (write_mmmu, "MMMU"),
           "mathvista_testmini": (write_mathvista, "MathVista"), "ai2d": (write_ai2d, "ai2d")}  # fmt: skip
SCRIPTS = {"mmstar": MMSTAR_SCRIPT, "mmmu_val": MMMU_SCRIPT, "mathvista_testmini": MATHVISTA_SCRIPT,
           "ai2d": AI2D_SCRIPT}  # fmt: skip
EXPECTED = {"mmstar": MMSTAR_EXPECTED, "mmmu_val": MMMU_EXPECTED, "mathvista_testmini": MATHVISTA_EXPECTED,
            "ai2d": AI2D_EXPECTED}  # fmt: skip


def write_all(out: Path) -> dict[str, Path]:
    """Every benchmark's fixture under `out`; returns {benchmark name: its root folder}."""
    return {name: write(Path(out) / folder) for name, (write, folder) in WRITERS.items()}


if __name__ == "__main__":
    for name, path in write_all(Path(sys.argv[1])).items():
        print(name, path)
