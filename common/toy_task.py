"""A learnable, checkable multimodal toy task: coloured shapes, questions about them, right and wrong answers.

Each example is drawn from its own seeded RNG (`seed`, split, index), so any example can be regenerated alone and
the output never depends on how many were asked for. Kinds of question:

* ``color``: "What color is the shape?"  (needs the image)
* ``shape``: "What shape is in the picture?"  (needs the image)
* ``count``: "How many shapes are there?"  (needs the image)
* ``sum``: "What is 2 plus 3?"  (text only, no image)

Every wrong answer is drawn from the same set as the right one, so without the image a model can only guess: a
reward model that beats chance on the image kinds is reading the image.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
}
SHAPES = ("square", "circle", "triangle")
COUNT_WORDS = ("one", "two", "three")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
IMAGE_KINDS = ("color", "shape", "count")
KINDS = IMAGE_KINDS + ("sum",)

_QUESTIONS = {
    "color": ["What color is the shape?", "Which color is the shape in the image?"],
    "shape": ["What shape is in the picture?", "Which shape does the image show?"],
    "count": ["How many shapes are there?", "Count the shapes in the image."],
    "sum": ["What is {a} plus {b}?", "Compute {a} plus {b}."],
}
_ANSWERS = {
    "color": ["The shape is {x}.", "It is {x}."],
    "shape": ["It is a {x}.", "The picture shows a {x}."],
    "count": ["There are {x}.", "I count {x}."],
    "sum": ["The answer is {x}.", "It is {x}."],
}
CHOICES = {"color": tuple(COLORS), "shape": SHAPES, "count": COUNT_WORDS, "sum": NUMBER_WORDS}


@dataclasses.dataclass
class ToyExample:
    id: str
    kind: str
    question: str
    answer: str  # the right answer word
    wrong: str  # a wrong answer word from the same set
    template: str  # answer sentence with {x}
    image: Image.Image | None

    def response(self, word: str) -> str:
        return self.template.format(x=word)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb: tuple[int, int, int]):
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "circle":
        draw.ellipse(box, fill=rgb)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=rgb)


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in rgb)


def render_image(rng: random.Random, size: int, shapes: Sequence[tuple[str, str]]) -> Image.Image:
    """A `size`x`size` light background with the given (shape, color) pairs in separate cells of a grid."""
    image = Image.new("RGB", (size, size), tuple(rng.randint(235, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    cells = [(r, c) for r in range(2) for c in range(2)]
    rng.shuffle(cells)
    half = size // 2
    for (shape, color), (r, c) in zip(shapes, cells):
        side = rng.randint(int(half * 0.55), int(half * 0.9)) if len(shapes) > 1 else rng.randint(size // 2, size - 8)
        cell_x, cell_y, cell = (c * half, r * half, half) if len(shapes) > 1 else (0, 0, size)
        x0 = cell_x + rng.randint(0, cell - side)
        y0 = cell_y + rng.randint(0, cell - side)
        _draw_shape(draw, shape, (x0, y0, x0 + side - 1, y0 + side - 1), _jitter(COLORS[color], rng))
    return image


def make_example(seed: int, split: str, index: int, kind: str, image_size: int = 112) -> ToyExample:
    """The `index`-th example of `split`, deterministic in (seed, split, index, kind)."""
    if kind not in KINDS:
        raise ValueError(f"unknown toy question kind {kind!r}; choose from {KINDS}")
    rng = random.Random(f"{seed}/{split}/{index}/{kind}")
    question = rng.choice(_QUESTIONS[kind])
    template = rng.choice(_ANSWERS[kind])
    image = None
    if kind == "sum":
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        question, answer = question.format(a=NUMBER_WORDS[a], b=NUMBER_WORDS[b]), NUMBER_WORDS[a + b]
    else:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        n = rng.randint(1, 3) if kind == "count" else 1
        image = render_image(rng, image_size, [(shape, color)] * n)
        answer = {"color": color, "shape": shape, "count": COUNT_WORDS[n - 1]}[kind]
    wrong = rng.choice([c for c in CHOICES[kind] if c != answer])
    return ToyExample(f"toy-{split}-{kind}-{index:06d}", kind, question, answer, wrong, template, image)


def _prompt(ex: ToyExample) -> list[dict]:
    parts = ([{"type": "image"}] if ex.image is not None else []) + [{"type": "text", "text": ex.question}]
    return [{"role": "user", "content": parts}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def preference_record(ex: ToyExample) -> dict:
    """A reward-model / MPO pair: chosen gives the right answer, rejected the wrong one, same sentence."""
    return {
        "id": ex.id,
        "prompt": _prompt(ex),
        "chosen": _assistant(ex.response(ex.answer)),
        "rejected": _assistant(ex.response(ex.wrong)),
        "images": [ex.image] if ex.image is not None else [],
        "source": f"toy/{ex.kind}",
    }


def prompt_record(ex: ToyExample) -> dict:
    """A prompt for sampling, with its ground truth and the answer set used to check responses."""
    return {
        "id": ex.id,
        "prompt": _prompt(ex),
        "images": [ex.image] if ex.image is not None else [],
        "answer": ex.answer,
        "choices": list(CHOICES[ex.kind]),
        "source": f"toy/{ex.kind}",
    }


@dataclasses.dataclass
class ToyTaskConfig:
    """What `write_toy_task` generates."""

    n_train: int = 512  # examples per kind in the training splits
    n_eval: int = 128  # examples per kind in the held-out splits
    kinds: tuple[str, ...] = ("color", "shape", "count", "sum")
    image_size: int = 112  # 112x112 -> 16 image tokens with the tiny processor's max_pixels
    seed: int = 0
    fmt: str = "folder"  # "folder" (datasets save_to_disk), "parquet" or "jsonl"


def examples(cfg: ToyTaskConfig, split: str, n: int) -> list[ToyExample]:
    """`n` examples of each kind, interleaved by kind."""
    return [make_example(cfg.seed, split, i, k, cfg.image_size) for i in range(n) for k in cfg.kinds]


def write_toy_task(out_dir: str | Path, cfg: ToyTaskConfig | None = None) -> dict[str, Path]:
    """Write the toy task's splits under `out_dir`.

    Returns paths to: `pairs_train`, `pairs_eval` (preference records for the reward model and MPO),
    `prompts_train`, `prompts_eval` (prompts with ground truth for sampling and policy evaluation).
    Train and eval examples come from different RNG streams ("train" / "eval" splits).
    """
    from common.io import write_records

    cfg = cfg or ToyTaskConfig()
    out_dir = Path(out_dir)
    ext = {"folder": "", "parquet": ".parquet", "jsonl": ".jsonl"}[cfg.fmt]
    paths = {}
    for split, n in (("train", cfg.n_train), ("eval", cfg.n_eval)):
        exs = examples(cfg, split, n)
        paths[f"pairs_{split}"] = write_records([preference_record(e) for e in exs], out_dir / f"pairs_{split}{ext}")
        paths[f"prompts_{split}"] = write_records([prompt_record(e) for e in exs], out_dir / f"prompts_{split}{ext}")
    return paths
