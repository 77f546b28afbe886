"""Preference readers: public preference sets -> preference records (`common.schema`), streamed row by row.

Files: `.jsonl`/`.json` (one row a line, or one array), `.parquet` (read in record batches), a folder of Parquet
shards (a hub snapshot), or a `datasets` folder (memory-mapped). Images: embedded `{"bytes", "path"}`, or paths
relative to `image_root`, which is a folder, a `.zip` or a `.tar` (members read without extracting); the default is
the file's folder. Every image comes out as `{"bytes", "path"}` so the chunks embed it.

Formats (`SourceSpec.format`) and their `options`; the layouts were checked against each set's dataset card and
the public code that loads it (tests/data_builders/fixtures/reward_data/hub_layouts.py reproduces them):

* ``rlaif_v``: openbmb/RLAIF-V-Dataset (card `dataset_info`; `RLAIF-V-Dataset_0NN.parquet` at the snapshot's root):
  `question`, `chosen`, `rejected`, `image` (`{"bytes", "path"}`) or `image_path`, `idx` (a string), `ds_name`.
* ``vlfeedback``: MMInstruction/VLFeedback: the Parquet snapshot (`data/train-*.parquet`, an `image` struct, and
  `completions` stored as `datasets` stores the card's `sequence` of a struct: a struct of lists `{"annotations":
  [...], "model": [...], "response": [...]}`, indexed per completion as the Silkie training code does) or the older
  `vlfeedback_80k.jsonl` (a list of completion dicts, `img_path` in `merged_images.zip`). Each completion's rating
  is the mean over `aspects` (default all three: Helpfulness, Visual Faithfulness, Ethical Considerations); pairs
  are `pairs: best_vs_worst` (default) or `all` pairs whose rating gap is at least `min_gap` (default 1).
* ``llava_critic``: lmms-lab/llava-critic-113k (card: configs `pairwise` and `pointwise`, files
  `<config>/train-0000N-of-0000M.parquet`): `id`, `image`, `conversations` = [{from: human, value: judge prompt},
  {from: gpt, value: judgement}]. The published pairwise prompts read `Question: [...]`, `The first response:
  [...]`, `The second response: [...]` and the verdicts `The better response: [first]` / `[second]` (or `[1]` /
  `[2]`); the older `[Question]` / `[The Start of Assistant 1's Answer]` markers with `Answer 1 is better` or
  `[[A]]` verdicts are read too. Ties, unparsable judgements and pointwise rows (one response) are counted skips.
* ``skywork``: Skywork/Skywork-Reward-Preference-80K-v0.2 (`data/train-00000-of-00001.parquet`): `chosen` /
  `rejected` message lists (`list<struct<content, role>>`) sharing the prompt turns, the last message the
  assistant's answer; text only.
* ``mmpr``: OpenGVLab/MMPR: `path` is its `meta.json` ({name: {`root`, `annotation`, `repeat_time`,
  `data_augment`, `length`}}, the InternVL meta-file convention), each annotation a JSONL of `image` (path or list
  under `root`), `question` (`<image>` tags), `chosen`, `rejected`. Each row is read once; its pair carries
  `repeat: (entry, repeat_time)`, a sampling weight that mixing applies after cleaning (`mixing.apply_repeats`), so
  dedup sees no copies. `data_augment` is a training-time augmentation, reported by a warning and not applied.
* ``mapping``: any table; `options.columns` maps record fields to its columns, e.g. `{prompt: question, chosen:
  good, rejected: bad, images: img, id: uid, chosen_rating: score_a, rejected_rating: score_b}` (ratings optional:
  equal ones make the pair ambiguous); a prompt column may hold a string or messages.
* ``preference``: our own records (`id`, `prompt`, `chosen`, `rejected`, `images`).

A file that cannot be read at all (missing, a `.parquet` that is not Parquet, text that is not UTF-8, an MMPR
`meta.json` that is something else) raises `SourceError` naming the source and the path; a first row without the
columns the format reads gives a warning that guesses the format it has.
A row that cannot be converted raises `RecordError` (its `reason` is counted by the job); one row may give several
pairs (VLFeedback with `pairs: all`).
"""

from __future__ import annotations

import json
import re
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from common.errors import InputError
from common.io import BAD_JSON, iter_raw_rows
from common.schema import RecordError
from data_builders.sources import as_list, first_of, user_messages

FORMATS = ("rlaif_v", "vlfeedback", "llava_critic", "skywork", "mmpr", "mapping", "preference")
VLFEEDBACK_ASPECTS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")


class ImageResolver:
    """Turns a row's image (bytes dict, or a path under a folder, `.zip` or `.tar`) into `{"bytes", "path"}`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._zip = zipfile.ZipFile(self.root) if self.root.suffix == ".zip" else None
        self._tar = tarfile.open(self.root) if self.root.is_file() and ".tar" in self.root.name else None
        self._members = {m.name.lstrip("./"): m for m in self._tar.getmembers()} if self._tar else None

    def __call__(self, image: Any, ref: str, field: str) -> dict:
        if isinstance(image, Mapping) and image.get("bytes"):
            return {"bytes": bytes(image["bytes"]), "path": image.get("path")}
        path = image.get("path") if isinstance(image, Mapping) else image
        if not isinstance(path, str) or not path:
            raise RecordError(ref, field, f"expected image bytes or a path, got {type(image).__name__}")
        try:
            return {"bytes": self._read(path), "path": Path(path).name}
        except (OSError, KeyError) as e:
            raise RecordError(ref, field, "cannot open image file", f"{path!r} in {self.root}: {e}") from e

    def _read(self, path: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(path.lstrip("./"))
        if self._tar is not None:
            member = self._tar.extractfile(self._members[path.lstrip("./")])
            if member is None:
                raise KeyError(f"{path} is not a file")
            return member.read()
        return (self.root / path if not Path(path).is_absolute() else Path(path)).read_bytes()


def _text(value: Any, ref: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(ref, field, "the response is empty" if isinstance(value, str) else
                          f"expected a string, got {type(value).__name__}")  # fmt: skip
    return value.strip()


def _pair(prompt: list[dict], images: list, chosen: str, rejected: str, **meta: Any) -> dict:
    return {"prompt": prompt, "images": images, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "meta": {k: v for k, v in meta.items() if v is not None}}  # fmt: skip


def _question_pair(row: Mapping, ref: str, images: list, question_key: str, resolve: ImageResolver, **meta) -> dict:
    images = [resolve(im, ref, f"image[{i}]") for i, im in enumerate(images)]
    prompt = user_messages(row.get(question_key), len(images), ref, question_key)
    return _pair(prompt, images, _text(row.get("chosen"), ref, "chosen"), _text(row.get("rejected"), ref, "rejected"),
                 **meta)  # fmt: skip


def _rlaif_v(row: Mapping, ref: str, resolve: ImageResolver, opts: Mapping) -> list[dict]:
    image = row.get("image") if row.get("image") is not None else row.get("image_path")
    return [_question_pair(row, ref, as_list(image), "question", resolve, original_id=first_of(row, ("idx", "id")),
                           origin=row.get("ds_name") or row.get("origin_dataset"))]  # fmt: skip


def _rating(completion: Mapping, aspects: tuple[str, ...], ref: str, k: int) -> float:
    annotations = completion.get("annotations") if isinstance(completion, Mapping) else None
    if not isinstance(annotations, Mapping):
        raise RecordError(ref, f"completions[{k}].annotations", "missing")
    values = []
    for aspect in aspects:
        rating = (annotations.get(aspect) or {}).get("Rating")
        try:
            values.append(float(rating))
        except (TypeError, ValueError) as e:
            raise RecordError(ref, f"completions[{k}].annotations", f"unparsable {aspect} rating",
                              repr(rating)) from e  # fmt: skip
    return sum(values) / len(values)


def _completions(value: Any, ref: str) -> Any:
    """VLFeedback's completions as a list of dicts. The hub's Parquet snapshot stores them as `datasets` stores a
    `Sequence` of a struct: one struct of equal-length lists (`{"annotations": [...], "model": [...],
    "response": [...]}`), which `datasets` also decodes that way; the JSONL layout has a list of dicts."""
    if not isinstance(value, Mapping):
        return value
    lists = {k: v for k, v in value.items() if v is not None}
    if not all(isinstance(v, list) for v in lists.values()) or len({len(v) for v in lists.values()}) > 1:
        raise RecordError(ref, "completions", "a struct of lists of unequal lengths",
                          ", ".join(f"{k}: {len(v) if isinstance(v, list) else type(v).__name__}"
                                    for k, v in lists.items()))  # fmt: skip
    return [dict(zip(lists, values)) for values in zip(*lists.values())]


def _vlfeedback(row: Mapping, ref: str, resolve: ImageResolver, opts: Mapping) -> list[dict]:
    aspects = tuple(opts.get("aspects", VLFEEDBACK_ASPECTS))
    min_gap, mode = float(opts.get("min_gap", 1.0)), opts.get("pairs", "best_vs_worst")
    completions = _completions(row.get("completions"), ref)
    if not isinstance(completions, list) or len(completions) < 2:
        raise RecordError(ref, "completions", "fewer than two completions")
    rated = [(_rating(c, aspects, ref, k), _text(c.get("response"), ref, f"completions[{k}].response"), c.get("model"))
             for k, c in enumerate(completions)]  # fmt: skip
    order = sorted(range(len(rated)), key=lambda k: -rated[k][0])  # stable: ties keep file order
    if mode == "best_vs_worst":
        candidates = [(order[0], order[-1])]
    else:
        candidates = [(a, b) for i, a in enumerate(order) for b in order[i + 1 :]]
    pairs = [(a, b) for a, b in candidates if rated[a][0] - rated[b][0] >= min_gap and rated[a][0] > rated[b][0]]
    if not pairs:
        problem = "all ratings equal" if rated[order[0]][0] == rated[order[-1]][0] else f"no rating gap >= {min_gap}"
        raise RecordError(ref, "completions", problem)
    field = "image" if row.get("image") is not None else "img_path"
    images = [resolve(im, ref, field) for im in as_list(row.get(field))]
    prompt = user_messages(row.get("prompt"), len(images), ref, "prompt")
    return [_pair(prompt, images, rated[a][1], rated[b][1], original_id=row.get("id"), chosen_rating=rated[a][0],
                  rejected_rating=rated[b][0], chosen_model=rated[a][2], rejected_model=rated[b][2])
            for a, b in pairs]  # fmt: skip


_ANSWER = r"(?:Assistant|Answer|Response)?\s*{k}(?:'s)?\s*(?:Answer|Response)?"
_QUESTION = re.compile(r"\[Question\]\s*(.*?)\s*\[The Start of", re.S)
_VERDICT = re.compile(r"\b(?:Answer|Response|Assistant)\s*(1|2|A|B)\b(?:'s answer)?\s+is\s+(?:better|preferred|superior)"
                      r"|\[\[(A|B)\]\]|The better response:\s*\[(first|second|1|2)\]", re.I)  # fmt: skip
_TIE = re.compile(r"\b(?:equally (?:good|bad|helpful)|a tie|tie\b)|\[\[C\]\]", re.I)
# the published pairwise wording: `Question: [...]`, `The first response: [...]`, `The second response: [...]`
_BRACKETED = ("Question: [", "The first response: [", "The second response: [")
_POINTWISE = re.compile(r"\bresponse:\s*\[", re.I)


def _critic_answer(prompt: str, k: str, ref: str) -> str:
    ids = {"1": "(?:1|A)", "2": "(?:2|B)"}[k]
    start, end = (rf"\[The {w} of {_ANSWER.format(k=ids)}\]" for w in ("Start", "End"))
    m = re.search(start + r"\s*(.*?)\s*" + end, prompt, re.S | re.I)
    if not m:
        raise RecordError(ref, "conversations", f"answer {k} not found in the judge prompt")
    return _text(m.group(1), ref, f"answer {k}")


def _bracketed(text: str) -> str:
    """`text` without the `]` that closes its bracket (and anything after it, such as `ASSISTANT:`)."""
    end = text.rfind("]")
    return text[:end] if end >= 0 else text


def _critic_parts(prompt: str, ref: str) -> tuple[str, dict[str, str]]:
    """(question, {"1": first answer, "2": second answer}) of a pairwise judge prompt, in either wording."""
    starts = [prompt.find(marker) for marker in _BRACKETED]
    if all(i >= 0 for i in starts) and starts == sorted(starts):
        pieces = [prompt[i + len(m) : j] for i, m, j in zip(starts, _BRACKETED, [*starts[1:], len(prompt)])]
        question, first, second = (_bracketed(piece).strip() for piece in pieces)
        return question, {"1": _text(first, ref, "answer 1"), "2": _text(second, ref, "answer 2")}
    question = _QUESTION.search(prompt)
    if question:
        return question.group(1), {k: _critic_answer(prompt, k, ref) for k in ("1", "2")}
    if _POINTWISE.search(prompt) and "second response" not in prompt.lower():
        raise RecordError(ref, "conversations", "a pointwise judgement (one response): no pair")
    raise RecordError(ref, "conversations", "no question in the judge prompt (neither 'Question: [' nor '[Question]')")


def _llava_critic(row: Mapping, ref: str, resolve: ImageResolver, opts: Mapping) -> list[dict]:
    conv = row.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(t, Mapping) for t in conv):
        raise RecordError(ref, "conversations", "expected a human turn and a gpt turn")
    prompt, judgement = str(conv[0].get("value") or ""), str(conv[-1].get("value") or "")
    question, answers = _critic_parts(prompt, ref)
    if not question.replace("<image>", "").strip():
        raise RecordError(ref, "conversations", "the question in the judge prompt is empty")
    verdicts = {("1" if next(g for g in m.groups() if g).lower() in ("1", "a", "first") else "2")
                for m in _VERDICT.finditer(judgement)}  # fmt: skip
    if not verdicts and _TIE.search(judgement):
        raise RecordError(ref, "conversations", "the judgement is a tie")
    if len(verdicts) != 1:
        raise RecordError(
            ref, "conversations", "no verdict in the judgement" if not verdicts else "conflicting verdicts"
        )
    better = verdicts.pop()
    images = [resolve(im, ref, "image") for im in as_list(row.get("image"))]
    messages = user_messages(question, len(images), ref, "conversations")
    return [_pair(messages, images, answers[better], answers["2" if better == "1" else "1"], original_id=row.get("id"),
                  origin=row.get("source"))]  # fmt: skip


def _skywork(row: Mapping, ref: str, resolve: ImageResolver, opts: Mapping) -> list[dict]:
    turns = {}
    for key in ("chosen", "rejected"):
        msgs = row.get(key)
        if not isinstance(msgs, list) or len(msgs) < 2 or not all(isinstance(m, Mapping) for m in msgs):
            raise RecordError(ref, key, "expected a list of at least two messages")
        if msgs[-1].get("role") != "assistant":
            raise RecordError(ref, key, "the last message is not the assistant's")
        turns[key] = msgs
    prompt = [{"role": m.get("role"), "content": m.get("content")} for m in turns["chosen"][:-1]]
    if prompt != [{"role": m.get("role"), "content": m.get("content")} for m in turns["rejected"][:-1]]:
        raise RecordError(ref, "rejected", "its prompt turns differ from chosen's")
    return [_pair(prompt, [], _text(turns["chosen"][-1].get("content"), ref, "chosen"),
                  _text(turns["rejected"][-1].get("content"), ref, "rejected"), origin=row.get("source"))]  # fmt: skip


def _mmpr(row: Mapping, ref: str, resolve: ImageResolver, opts: Mapping) -> list[dict]:
    pair = _question_pair(row, ref, as_list(row.get("image")), "question", resolve, original_id=row.get("id"),
                          origin=opts["_subset"])  # fmt: skip
    return [{**pair, "repeat": (opts["_subset"], opts["_repeat_time"])}]


def _mapping(row: Mapping, ref: str, resolve: ImageResolver, opts: Mapping) -> list[dict]:
    cols = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "images": "images", "id": "id",
            **(opts.get("columns") or {})}  # fmt: skip
    images = [resolve(im, ref, cols["images"]) for im in as_list(row.get(cols["images"]))]
    prompt = row.get(cols["prompt"])
    if not isinstance(prompt, list):
        prompt = user_messages(prompt, len(images), ref, cols["prompt"])
    responses = {}
    for key in ("chosen", "rejected"):
        value = row.get(cols[key])
        responses[key] = value[-1].get("content") if isinstance(value, list) and value else value
    ratings = {k: row.get(cols[k]) for k in ("chosen_rating", "rejected_rating") if k in cols}
    return [_pair(prompt, images, _text(responses["chosen"], ref, cols["chosen"]),
                  _text(responses["rejected"], ref, cols["rejected"]), original_id=row.get(cols["id"]), **ratings)]  # fmt: skip


def _preference(row: Mapping, ref: str, resolve: ImageResolver, opts: Mapping) -> list[dict]:
    images = [resolve(im, ref, f"images[{i}]") for i, im in enumerate(as_list(row.get("images")))]
    return [{"prompt": row.get("prompt"), "images": images, "chosen": row.get("chosen"), "rejected": row.get("rejected"),
             "meta": {"original_id": row.get("id")}}]  # fmt: skip


CONVERTERS: dict[str, Callable[[Mapping, str, ImageResolver, Mapping], list[dict]]] = {
    "rlaif_v": _rlaif_v, "vlfeedback": _vlfeedback, "llava_critic": _llava_critic, "skywork": _skywork,
    "mmpr": _mmpr, "mapping": _mapping, "preference": _preference,
}  # fmt: skip


# The columns each format reads (a file lacking one is probably of another format: `column_problem` says so).
EXPECTED_COLUMNS = {"rlaif_v": ("question", "chosen", "rejected"), "vlfeedback": ("prompt", "completions"),
                    "llava_critic": ("conversations",), "skywork": ("chosen", "rejected"),
                    "mmpr": ("question", "chosen", "rejected"), "preference": ("prompt", "chosen", "rejected")}  # fmt: skip


class SourceError(InputError):
    """A source as a whole cannot be read (missing, empty, of another format); the message names source and path."""


def column_problem(fmt: str, options: Mapping, columns: list[str]) -> str | None:
    """Why a file with these columns does not look like `fmt` (with a guess at its format), or None."""
    if fmt == "mapping":
        cols = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", **(options.get("columns") or {})}
        expected = tuple(cols[k] for k in ("prompt", "chosen", "rejected"))
    else:
        expected = EXPECTED_COLUMNS[fmt]
    if all(c in columns for c in expected):
        return None
    guesses = sorted((f for f, cols in EXPECTED_COLUMNS.items() if f != fmt and all(c in columns for c in cols)),
                     key=lambda f: -len(EXPECTED_COLUMNS[f]))  # fmt: skip
    hint = f": is this format {guesses[0]}?" if guesses else ""
    return f"columns {', '.join(expected)} expected; found {', '.join(columns)}{hint}"


def _file_problem(path: Path) -> str | None:
    """What makes a source unreadable before any row is read: a missing path, or a `.parquet` file (alone, or a
    shard of a folder) that is not Parquet. An empty JSONL file is no problem here: it yields no rows."""
    if not path.exists():
        return "does not exist"
    shards = [path] if path.suffix == ".parquet" and path.is_file() else []
    if path.is_dir() and not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        shards = sorted(path.rglob("*.parquet"))
    for shard in shards:
        which = "" if shard == path else f"{shard.relative_to(path)}: "
        with open(shard, "rb") as f:
            head = f.read(4)
        if not head:
            return f"{which}not a Parquet file (0 bytes)"
        if head != b"PAR1":
            return f"{which}not a Parquet file (it starts with {head!r}, not b'PAR1')"
    return None


def _rows(path: Path, where: str) -> Iterator[dict]:
    """`iter_raw_rows(path)`, a problem of the file itself raised as a `SourceError` naming `where` and the path."""
    problem = _file_problem(path)
    if problem:
        raise SourceError(f"{where}: {path}: {problem}")
    try:
        yield from iter_raw_rows(path)
    except (OSError, UnicodeDecodeError, ValueError, pa.ArrowException) as e:
        if isinstance(e, RecordError):
            raise
        raise SourceError(f"{where}: {path}: cannot be read as a table ({type(e).__name__}: {e})") from e


def _mmpr_entries(meta_path: Path, where: str) -> dict[str, Mapping]:
    """MMPR's `meta.json`: {entry name: {`root`, `annotation`, `repeat_time`, `data_augment`, `length`}}."""
    if meta_path.is_dir() or meta_path.suffix != ".json":
        raise SourceError(f"{where}: {meta_path}: the mmpr format reads MMPR's meta.json ({{name: {{root, "
                          f"annotation, repeat_time, ...}}}}), not a {'folder' if meta_path.is_dir() else meta_path.suffix or 'file'}")  # fmt: skip
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{where}: {meta_path}: not MMPR's meta.json ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or not meta:
        raise SourceError(f"{where}: {meta_path}: not MMPR's meta.json (expected a non-empty mapping of entries)")
    for name, entry in meta.items():
        missing = [k for k in ("root", "annotation") if not isinstance(entry, Mapping) or k not in entry]
        if missing:
            raise SourceError(f"{where}: {meta_path}: entry {name!r} has no {' or '.join(missing)}")
        repeat = entry.get("repeat_time", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int | float) or repeat < 0:
            raise SourceError(f"{where}: {meta_path}: entry {name!r}: repeat_time={repeat!r} must be a number >= 0")
    return meta


def _mmpr_rows(meta_path: Path, image_root: str | None, where: str) -> Iterator[tuple[dict, Callable]]:
    for name, entry in _mmpr_entries(meta_path, where).items():
        resolve = lambda p: Path(p) if Path(p).is_absolute() else meta_path.parent / p  # noqa: E731
        resolver = ImageResolver(Path(image_root) / entry["root"] if image_root else resolve(entry["root"]))
        annotation, entry_where = resolve(entry["annotation"]), f"{where} (meta.json entry {name!r})"
        if entry.get("data_augment"):
            warnings.warn(f"{where}: {meta_path}: entry {name!r} has data_augment: true, an image augmentation InternVL "
                          "applies while training; the pairs are read as they are", UserWarning, stacklevel=3)  # fmt: skip
        convert = _bind("mmpr", resolver, {"_subset": name, "_repeat_time": float(entry.get("repeat_time", 1))})
        for row in _rows(annotation, entry_where):
            yield row, convert


def iter_source_rows(fmt: str, path: str | Path, image_root: str | None = None, options: Mapping | None = None,
                     where: str = "source") -> Iterator[tuple[dict, Callable]]:  # fmt: skip
    """(raw row, converter bound to its image resolver and options) for every row of a source, in file order.

    Raises `SourceError` (naming `where`, e.g. `sources[vlfeedback].path`, and the file) for a file that cannot be
    read; warns when the first row's columns are not the ones `fmt` reads."""
    path = Path(path)
    rows = _mmpr_rows(path, image_root, where) if fmt == "mmpr" else None
    if rows is None:
        convert = _bind(fmt, ImageResolver(image_root or (path if path.is_dir() else path.parent)), {})
        rows = ((row, convert) for row in _rows(path, where))
    first = True
    for row, convert in rows:
        if first and BAD_JSON not in row:
            problem = column_problem(fmt, options or {}, list(row))
            if problem:
                warnings.warn(f"{where}: {path}: {problem}", UserWarning, stacklevel=2)
            first = False
        yield row, convert


def _bind(fmt: str, resolver: ImageResolver, extra: Mapping) -> Callable:
    def convert(row: Mapping, ref: str, options: Mapping) -> list[dict]:
        return CONVERTERS[fmt](row, ref, resolver, {**options, **extra})

    return convert
