"""The reward-data job: read public preference sets, clean them, mix the rest into one `datasets` folder per stage.

    build_reward_data(cfg) -> {stage name: <output_dir>/stages/<name>}

Steps per pair, each counted per source in the report (in, out, and why): `read` (convert a row; one row may give
several pairs), `validate` (the record schema), `ambiguous`, `images` (decode and hash), `decontaminate`,
`exact_dedup`, `near_dedup`, `surrogate` (with a reward model). Layout of `output_dir`::

    run_config.json                  the settings and input fingerprints (common.run_folder: a rerun must match)
    chunks/chunk-000003/             kept pairs of input rows [3*chunk_size, 4*chunk_size) (datasets folder)
    chunks/chunk-000003.keys.npz     their dedup keys (a resumed run rebuilds the index from these)
    chunks/chunk-000003.json         the chunk's statistics, written last: its presence marks the chunk finished
    stages/<name>/                   one datasets folder per stage: `recipes/train_reward.py` reads it directly
    stages.yaml, stages.json         the `stages:` of a reward training config pointing at them (YAML; JSON for --stages)
    decontaminated.jsonl             every pair dropped for benchmark overlap, with the item it matched
    report.json, report.md, hist_*.png, run_meta.json

**Memory.** Rows stream from disk chunk by chunk (Parquet and `datasets` folders are memory-mapped); what stays in
memory is the dedup and benchmark indexes and ~11 bytes per kept pair for the mix (the statistics are counts).
**Resume.** Kill at any moment and rerun the same command: finished chunks are skipped (their keys reload into the
index), so the output equals an uninterrupted run's.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import yaml
from tqdm.auto import tqdm

from common.cli import write_run_meta
from common.config_checks import raise_problems
from common.distributed import resolve_device
from common.io import check_row_parsed, write_records, write_text_atomic
from common.run_folder import claim_output_dir
from common.schema import RecordError, message_text, validate_preference_record
from common.scoring import Scorer
from data_builders.chunks import chunk_paths, prepare_chunks_dir
from data_builders.reward_data.config import RewardDataConfig, SourceSpec
from data_builders.reward_data.decontam import BenchmarkIndex
from data_builders.reward_data.dedup import DedupIndex, image_keys, messages_text, pair_keys
from data_builders.reward_data.filtering import SurrogateFilter, ambiguous_reason
from data_builders.reward_data.hub import source_files
from data_builders.reward_data.mixing import RepeatGroup, apply_repeats, plan_stage
from data_builders.reward_data.readers import iter_source_rows
from data_builders.reward_data.report import (
    MAX_EXAMPLES,
    add_chunk_stats,
    log_to_wandb,
    new_total,
    source_problems,
    write_report,
)
from reward.model import check_value_head

STEPS = ("read", "validate", "ambiguous", "images", "decontaminate", "exact_dedup", "near_dedup", "surrogate")
_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.List(
    {"type": datasets.Value("string"), "text": datasets.Value("string")})})  # fmt: skip
FEATURES = datasets.Features({
    "id": datasets.Value("string"), "prompt": _MESSAGES, "chosen": _MESSAGES, "rejected": _MESSAGES,
    "images": datasets.List(datasets.Image()), "source": datasets.Value("string"), "margin": datasets.Value("float64"),
    "chosen_score": datasets.Value("float64"), "rejected_score": datasets.Value("float64"),
    "meta": datasets.Value("string"),
})  # fmt: skip


def iter_rows(sources: list[SourceSpec]) -> Iterator[tuple[SourceSpec, int, dict, Any]]:
    """(source, row index within the source, raw row, converter) over all sources in config order, streamed; local
    paths or hub ids (`hub.source_files`)."""
    for spec in sources:
        path, image_root = source_files(spec)
        rows = iter_source_rows(spec.format, path, image_root, spec.options, f"sources[{spec.name}].path")
        for index, (row, convert) in enumerate(itertools.islice(rows, spec.max_rows)):
            yield spec, index, row, convert


class _Stats:
    """One chunk's counts: per source and step, pairs in and out and the reasons for every drop."""

    def __init__(self):
        self.data: dict[str, Any] = {"rows": 0, "sources": {}, "decontaminated": [], "flagged": {}, "kept": [],
                                     "examples": {},
                                     "hist": {"prompt_words": [], "response_words": [], "image_width": [],
                                              "image_height": []}}  # fmt: skip

    def step(self, source: str, step: str) -> dict:
        steps = self.data["sources"].setdefault(source, {s: {"in": 0, "out": 0, "dropped": {}} for s in STEPS})
        return steps[step]

    def passed(self, source: str, step: str, n_in: int = 1, n_out: int = 1) -> None:
        st = self.step(source, step)
        st["in"], st["out"] = st["in"] + n_in, st["out"] + n_out

    def dropped(self, source: str, step: str, reason: str, example: str | None = None) -> None:
        """Count one drop; `example` (the error, naming the row) is kept for the first `MAX_EXAMPLES` per reason."""
        st = self.step(source, step)
        st["in"] += 1
        st["dropped"][reason] = st["dropped"].get(reason, 0) + 1
        if example is not None:
            kept = self.data["examples"].setdefault(source, {}).setdefault(reason, [])
            if len(kept) < MAX_EXAMPLES:  # without object addresses (`<_io.BytesIO object at 0x...>`): a rerun
                kept.append(re.sub(r" at 0x[0-9a-f]+", "", example)[:300])  # writes the same statistics


class Pipeline:
    """The cleaning steps with their state (dedup index, benchmark index, surrogate filter, image-hashing pool)."""

    def __init__(self, cfg: RewardDataConfig, benchmarks: BenchmarkIndex, surrogate: SurrogateFilter | None):
        self.cfg, self.benchmarks, self.surrogate = cfg, benchmarks, surrogate
        self.index = DedupIndex(cfg.exact_dedup, cfg.near_dedup, cfg.near_text_threshold, cfg.image_hash_distance,
                                cfg.num_perm)  # fmt: skip
        self.pool = multiprocessing.get_context("fork").Pool(cfg.num_proc) if cfg.num_proc > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()

    def _convert(self, rows: list, stats: _Stats) -> list[dict]:
        """read, ambiguous, validate: rows -> schema-valid records with ids `<source>/<row>[-k]`."""
        records = []
        for spec, index, row, convert in rows:
            stats.data["rows"] += 1
            rid = f"{spec.name}/{index:08d}"
            try:
                check_row_parsed(row, index)
                pairs = convert(row, repr(rid), spec.options)
            except RecordError as e:
                stats.dropped(spec.name, "read", e.reason, str(e))
                continue
            stats.passed(spec.name, "read", 1, len(pairs))
            for k, rec in enumerate(pairs):
                meta = rec.get("meta") or {}  # a dict until written (the schema wants its JSON string)
                repeat = rec.get("repeat")  # (entry, repeat_time): a sampling weight for mixing, not part of the pair
                rec = {**rec, "id": rid if len(pairs) == 1 else f"{rid}-{k}", "source": spec.name, "meta": None}
                try:
                    rec = {**validate_preference_record(rec, index=index), "meta": meta, "repeat": repeat}
                except RecordError as e:
                    stats.dropped(spec.name, "validate", e.reason, str(e))
                    continue
                stats.passed(spec.name, "validate")
                reason = ambiguous_reason(rec) if self.cfg.drop_ambiguous else None
                if reason:
                    stats.dropped(spec.name, "ambiguous", reason)
                    continue
                stats.passed(spec.name, "ambiguous")
                records.append(rec)
        return records

    def process(self, rows: list) -> tuple[list[dict], tuple[list[str], list], _Stats]:
        """Run every step over one chunk's rows; return the kept records, the ids and dedup keys of the pairs the
        index took (the surrogate filter may drop some of those later) and the statistics."""
        stats = _Stats()
        records = self._convert(rows, stats)
        jobs = [[im["bytes"] for im in r["images"]] for r in records]
        hashed = self.pool.map(image_keys, jobs) if self.pool and jobs else [image_keys(j) for j in jobs]
        kept, indexed, keys = [], [], []
        for rec, ikeys in zip(records, hashed):
            src = rec["source"]
            if isinstance(ikeys, str):
                stats.dropped(src, "images", f"images: {ikeys}", f"record {rec['id']!r}: images: {ikeys}")
                continue
            stats.passed(src, "images")
            prompt_text = messages_text(rec["prompt"])
            match = self.benchmarks.find(prompt_text, [k.phash for k in ikeys])
            if match is not None:
                stats.dropped(src, "decontaminate", f"overlaps {match.benchmark}")
                stats.data["decontaminated"].append({"id": rec["id"], "source": src, **asdict(match)})
                continue
            stats.passed(src, "decontaminate")
            pk = pair_keys(prompt_text, messages_text(rec["chosen"]), messages_text(rec["rejected"]), ikeys,
                           self.cfg.num_perm)  # fmt: skip
            dup = self.index.find(pk)
            for kind in ("exact", "near"):
                if dup is not None and dup[0] == kind:
                    stats.dropped(src, f"{kind}_dedup", f"{kind} duplicate")
                    break
                stats.passed(src, f"{kind}_dedup")
            if dup is not None:
                continue
            self.index.add(rec["id"], pk)
            kept.append((rec, ikeys))
            indexed.append(rec["id"])
            keys.append(pk)
        kept = self._surrogate(kept, stats)
        out = []
        for rec, ikeys in kept:
            meta = dict(rec.get("meta") or {})
            out.append({"id": rec["id"], "prompt": rec["prompt"], "chosen": rec["chosen"], "rejected": rec["rejected"],
                        "images": rec["images"], "source": rec["source"], "margin": rec.get("margin"),
                        "chosen_score": rec.get("chosen_score"), "rejected_score": rec.get("rejected_score"),
                        "meta": json.dumps(meta, sort_keys=True, default=str)})  # fmt: skip
            hist = stats.data["hist"]
            hist["prompt_words"].append(len(message_text(rec["prompt"]).split()))
            hist["response_words"] += [len(message_text(rec[k]).split()) for k in ("chosen", "rejected")]
            hist["image_width"] += [k.width for k in ikeys]
            hist["image_height"] += [k.height for k in ikeys]
            stats.data["kept"].append([rec["source"], not rec["images"], rec["repeat"]])
        return out, (indexed, keys), stats

    def _surrogate(self, kept: list, stats: _Stats) -> list:
        if self.surrogate is None:
            return kept
        scores = self.surrogate.scores([rec for rec, _ in kept]) if kept else []
        out = []
        for (rec, ikeys), (chosen, rejected) in zip(kept, scores):
            rec["chosen_score"], rec["rejected_score"] = chosen, rejected
            reason = self.surrogate.reason(chosen, rejected)
            if reason and self.cfg.filter_action == "drop":
                stats.dropped(rec["source"], "surrogate", reason)
                continue
            if reason:
                rec["meta"] = {**(rec.get("meta") or {}), "surrogate_flag": reason}
                stats.data["flagged"][reason] = stats.data["flagged"].get(reason, 0) + 1
            stats.passed(rec["source"], "surrogate")
            out.append((rec, ikeys))
        return out


def _make_surrogate(cfg: RewardDataConfig, scorer: Scorer | None) -> SurrogateFilter | None:
    if scorer is None and cfg.reward_url:
        from data_builders.scoring import make_remote_scorer

        scorer = make_remote_scorer(cfg.reward_url, cfg.score_batch_size)
    if scorer is None and not cfg.reward_model_name_or_path:
        return None
    if scorer is None:
        from data_builders.scoring import make_scorer

        scorer = make_scorer(cfg.reward_model_name_or_path, cfg.dtype, str(resolve_device(cfg.device)),
                             cfg.score_batch_size, cfg.min_pixels, cfg.max_pixels)  # fmt: skip
    return SurrogateFilter(scorer, cfg.filter_min_chosen_score, cfg.filter_min_gap, cfg.score_batch_size)


@dataclass
class FilterScorer:
    """The surrogate filter's scorer, recorded beside the config in the run's identity (`common.run_folder`): one
    passed in code is no config field, yet decides which pairs are kept, so a rerun with another one is refused. A
    reward server counts by the model it serves (`ServedRewardModel`), never by its URLs: other replicas of the same
    model resume, another model behind the same URL is refused."""

    filter_scorer: str

    @classmethod
    def of(cls, cfg: RewardDataConfig, scorer: Scorer | None) -> FilterScorer:
        urls = getattr(scorer, "urls", None) if scorer is not None else cfg.reward_url
        if urls:
            from data_builders.scoring import ServedRewardModel

            served = ServedRewardModel.of(urls)
            return cls(f"reward server: {served.served_model_fingerprint} ({served.served_dtype})")
        if scorer is None:  # a local model from the config, whose fields count already
            return cls("config: reward_model_name_or_path" if cfg.reward_model_name_or_path else "none (no filter)")
        path = getattr(getattr(scorer, "config", None), "model_name_or_path", None)
        return cls(f"{type(scorer).__name__}({f'model={path}' if path else ''})")


def _keys_path(out: Path, chunk: int) -> Path:
    return chunk_paths(out, chunk)[0].with_suffix(".keys.npz")


def build_reward_data(cfg: RewardDataConfig, scorer: Scorer | None = None) -> dict[str, Path]:
    """Run (or resume) the job; return each stage's `datasets` folder.

    Args:
        cfg: the job's config (validated first).
        scorer: a ready-made `Scorer` for the surrogate filter; by default the reward server at `cfg.reward_url`,
            the local reward model at `cfg.reward_model_name_or_path`, or no filter when neither is set. Which one
            is part of the run's identity: a rerun into the same `output_dir` with another one is refused.

    Raises:
        ValueError: an invalid config. common.run_folder.RunFolderError: `output_dir` holds a different build.
    """
    cfg.validate()
    if scorer is None:  # a local surrogate reward model: its value head is checked before the folder is claimed
        check_value_head(cfg.reward_model_name_or_path, "reward_model_name_or_path")
    if not cfg.progress:
        datasets.disable_progress_bars()
    sources, stages, bench_specs, _ = cfg.specs()
    out = Path(cfg.output_dir)
    claim_output_dir(out, [cfg.identity(), FilterScorer.of(cfg, scorer)], cfg.inputs(),
                     overwrite=cfg.overwrite_output_dir)  # fmt: skip
    prepare_chunks_dir(out)
    benchmarks = BenchmarkIndex(bench_specs, cfg.decontam_text_threshold, cfg.image_hash_distance, cfg.num_perm)
    pipeline = Pipeline(cfg, benchmarks, None)  # its image-hashing pool forks before any model is loaded
    pipeline.surrogate = _make_surrogate(cfg, scorer)
    bar = tqdm(unit="row", desc="build_reward_data", disable=not cfg.progress)
    total, kept, n_chunks = new_total(), _KeptPairs(sources), 0
    try:
        rows = iter_rows(sources)
        for c in itertools.count():
            chunk = list(itertools.islice(rows, cfg.chunk_size))
            if not chunk:
                break
            data, stats_path = chunk_paths(out, c)
            if stats_path.exists():  # finished by an earlier run: only its keys are needed
                pipeline.index.load_chunk(_keys_path(out, c))
                stats_data = json.loads(stats_path.read_text())
            else:
                records, (indexed, keys), stats = pipeline.process(chunk)
                if records:
                    write_records(datasets.Dataset.from_list(records, features=FEATURES), data)
                DedupIndex.save_chunk(_keys_path(out, c), indexed, keys, cfg.num_perm)
                stats.data["chunk"] = c
                text = json.dumps(stats.data, sort_keys=True)
                write_text_atomic(stats_path, text)  # last: marks the chunk finished
                stats_data = json.loads(text)  # as a resumed run reads it, so both report alike
            add_chunk_stats(total, stats_data)
            kept.add(c, stats_data["kept"])
            bar.update(len(chunk))
            n_chunks = c + 1
    finally:
        bar.close()
        pipeline.close()
    raise_problems("reward data sources (nothing was mixed; the chunks are kept, so a rerun resumes)",
                   source_problems(total, sources, cfg.max_skip_fraction))  # fmt: skip
    return _finish(cfg, out, sources, stages, total, kept, n_chunks, pipeline, benchmarks)


class _KeptPairs:
    """Per kept pair, in chunk order, its repeat group (`mixing.RepeatGroup`: its source and MMPR entry, as a small
    integer code) and whether it has no image: the 3 bytes per pair that mixing needs, instead of the chunks' lists of
    Python objects."""

    def __init__(self, sources: list[SourceSpec]):
        self.groups: dict[RepeatGroup, int] = {RepeatGroup(s.name, None, 1.0): k for k, s in enumerate(sources)}
        self.chunks: list[int] = []  # the chunks that kept any pair (they have a datasets folder)
        self.text_only_parts: list[np.ndarray] = []
        self.group_parts: list[np.ndarray] = []

    def _group(self, source: str, repeat: list | None) -> int:
        group = RepeatGroup(source, *repeat) if repeat else RepeatGroup(source, None, 1.0)
        return self.groups.setdefault(group, len(self.groups))

    def add(self, chunk: int, kept: list) -> None:
        if kept:
            self.chunks.append(chunk)
            self.text_only_parts.append(np.array([t for _, t, _ in kept], dtype=bool))
            self.group_parts.append(np.array([self._group(s, r) for s, _, r in kept], dtype=np.int16))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(repeat group code, text-only) per kept pair."""
        if not self.chunks:
            return np.zeros(0, dtype=np.int16), np.zeros(0, dtype=bool)
        return np.concatenate(self.group_parts), np.concatenate(self.text_only_parts)


def _finish(cfg, out: Path, sources, stages, total: Mapping, kept: _KeptPairs, n_chunks: int, pipeline: Pipeline,
            benchmarks: BenchmarkIndex) -> dict[str, Path]:  # fmt: skip
    """Mix the kept pairs into stages, write them, the decontamination list and the report.

    The chunks' datasets are memory-mapped and concatenated without a copy; each stage is a `select` of row
    numbers over them (16 bytes per pair taken, reported with the mixing arrays) that `save_to_disk` writes batch by
    batch."""
    parts = [datasets.load_from_disk(str(chunk_paths(out, c)[0])) for c in kept.chunks]
    cleaned = datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_dict({k: [] for k in FEATURES},
                                                                                            features=FEATURES)  # fmt: skip
    kept_groups, text_only = kept.arrays()
    if len(cleaned) != len(kept_groups):
        raise RuntimeError(f"the chunks hold {len(cleaned)} pairs but their statistics list {len(kept_groups)}")
    positions, repeats = apply_repeats(list(kept.groups), kept_groups, cfg.seed)
    plans = [plan_stage(stage, k, sources, positions, text_only, cfg.seed) for k, stage in enumerate(stages)]
    kept_by_source = ", ".join(f"{s.name}: {len(positions[s.name])}" for s in sources)
    raise_problems("reward data stages (a stage with no pair cannot be trained on)",
                   [f"stages[{stage.name}]: no pair kept from its sources {stage.sources} (pairs kept per source: "
                    f"{kept_by_source}; report: see the chunks' statistics in {out / 'chunks'})"
                    for stage, (rows, _) in zip(stages, plans) if len(rows) == 0])  # fmt: skip
    stage_rows_bytes, paths, mixes = 0, {}, {}
    for stage, (rows, counts) in zip(stages, plans):
        stage_rows_bytes = max(stage_rows_bytes, 2 * rows.nbytes)  # the row numbers and their shuffled copy
        paths[stage.name] = write_records(cleaned.select(rows), out / "stages" / stage.name)
        mixes[stage.name] = {"pairs": int(len(rows)), "text_only": int(text_only[rows].sum()), "sources": counts}
    write_text_atomic(
        out / "decontaminated.jsonl", "".join(json.dumps(d, sort_keys=True) + "\n" for d in total["decontaminated"])
    )
    stage_block = [{"name": name, "datasets": {str(p): 1.0}} for name, p in paths.items()]
    write_text_atomic(out / "stages.json", json.dumps(stage_block))
    write_text_atomic(out / "stages.yaml", yaml.safe_dump({"stages": stage_block}, sort_keys=False))
    # the index as persisted: the keys files a resumed run reloads (every chunk writes one)
    mixing_bytes = kept_groups.nbytes + text_only.nbytes + sum(p.nbytes for p in positions.values())
    mixing_bytes += stage_rows_bytes
    index_bytes = sum(_keys_path(out, c).stat().st_size for c in range(n_chunks))
    meta = {"stages": mixes, "cleaned_pairs": len(cleaned), "repeat_time": repeats,
            "dedup_index": {"pairs": len(pipeline.index), "bytes": index_bytes,
                            "bytes_per_pair": index_bytes / max(1, len(pipeline.index))},
            "mixing_arrays": {"pairs": len(cleaned), "bytes": mixing_bytes,
                              "bytes_per_pair": mixing_bytes / max(1, len(cleaned))},
            "benchmarks": {"items": benchmarks.sizes, "skipped": benchmarks.skipped},
            "surrogate_filter": cfg.reward_model_name_or_path or ("scorer given" if pipeline.surrogate else None)}  # fmt: skip
    report = write_report(out, total, meta)
    write_run_meta(out, [cfg], cleaned_pairs=len(cleaned), stages={n: str(p) for n, p in paths.items()})
    if cfg.report_to == "wandb":
        log_to_wandb(report, total, out, cfg.wandb_project, cfg.run_name or out.name, asdict(cfg))
    return paths
