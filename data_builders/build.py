"""The reward-ranked pair building job: sample K responses per prompt, score them, select pairs, write a dataset.

    build_pairs(cfg) -> <output_dir>/pairs      (a `datasets` folder in the toolkit's preference schema)

Layout of `output_dir`::

    run_config.json              the resolved config and the inputs' fingerprints (`common.run_folder`)
    chunks/chunk-000003/         the pairs of prompts [3*chunk_size, 4*chunk_size) (datasets folder, atomic rename)
    chunks/chunk-000003.json     that chunk's statistics, written last: its presence marks the chunk finished
    pairs/                       all chunks' pairs, in prompt order (written by rank 0 after every chunk is done)
    report.json, report.md, hist_{reward,gap,length}.png, run_meta.json

**Resume.** Killing the job at any moment loses at most the chunks being worked on: a chunk counts only once its
statistics file exists, and both its files are renamed into place atomically. Rerunning the same command skips the
finished chunks, provided the settings that decide the output and the inputs' content (prompts, policy and reward
model weights, hashed; with `reward_url`, the served model's fingerprint, whatever the URLs) are those of the first
run; otherwise the rerun is refused, naming what changed
(`--overwrite_output_dir true` starts over). Each prompt samples with its own seed (`prompt_seed(seed, prompt id)`),
so a resumed run writes the same dataset as an uninterrupted one.

**Sharding.** Under `torchrun`/`deepspeed` with N processes, rank r takes chunks r, r+N, r+2N...; chunk contents
do not depend on N, so the merged dataset equals the 1-process one. After a barrier, rank 0 merges.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from common.cli import write_run_meta
from common.correctness import correctness, judge_for
from common.distributed import barrier, rank_and_world, resolve_device, shard
from common.images import ImageError
from common.io import SkipLog, write_records, write_text_atomic
from common.run_folder import claim_output_dir
from common.schema import RecordError
from common.scoring import Scorer, ScoringGroup
from data_builders.chunks import chunk_paths as _chunk_paths
from data_builders.chunks import prepare_chunks_dir
from data_builders.config import BuildPairsConfig
from data_builders.pairing import pair_record, select_pairs
from data_builders.report import MAX_EXAMPLES, add_count, log_to_wandb, merge_stats, new_stats, write_report
from data_builders.sampling import PromptTooLong, Sampler, make_sampler, prompt_seed
from data_builders.scoring import ServedRewardModel, make_remote_scorer, make_scorer
from data_builders.sources import read_prompts
from reward.model import check_value_head

SAMPLING_FAILED = "sampling failed"
PROMPT_TOO_LONG = "prompt longer than max_prompt_tokens"
SCORING_FAILED = "scoring failed"


def prepare_output_dir(cfg: BuildPairsConfig, rank: int) -> Path:
    """Claim `output_dir` (`common.run_folder`: same settings and same prompts, policy and reward model content, or
    refused naming what changed) and clear the half-written files a killed run left. With `reward_url` the served
    model's fingerprint counts, not the URLs (`ServedRewardModel`)."""
    out = Path(cfg.output_dir)
    inputs = {"prompts": cfg.prompts, "policy": cfg.policy_name_or_path, "reward_model": cfg.reward_model_name_or_path}
    if cfg.image_root:
        inputs["image_root"] = cfg.image_root
    configs = [cfg, ServedRewardModel.of(cfg.reward_url)] if cfg.reward_url else [cfg]
    claim_output_dir(out, configs, inputs, overwrite=cfg.overwrite_output_dir)
    if rank == 0:
        prepare_chunks_dir(out)
    barrier()
    return out


def process_chunk(prompts: list[Mapping[str, Any]], sampler: Sampler, scorer: Scorer, cfg: BuildPairsConfig,
                  progress: tqdm | None = None) -> tuple[list[dict], dict[str, Any]]:  # fmt: skip
    """Sample, score and select pairs for some prompts; return the pair records and the chunk's statistics."""
    params, stats = cfg.sampling_params(), new_stats()
    provenance = {"policy": cfg.policy_name_or_path, "reward_model": cfg.reward_model_name_or_path, "rule": cfg.rule}
    sampled = []  # (prompt, seed, candidates)
    for prompt in prompts:
        stats["prompts"] += 1
        seed = prompt_seed(cfg.seed, prompt["id"])
        try:
            sampled.append((prompt, seed, sampler.sample(prompt, params, seed)))
        except (RecordError, ValueError) as e:  # a prompt the backend cannot take: count it, name it, go on
            reason = PROMPT_TOO_LONG if isinstance(e, PromptTooLong) else f"{SAMPLING_FAILED}: {_failure(e)}"
            _count_failure(stats, reason, prompt["id"], e)
            if progress is not None:
                progress.update(1)
    scores = _score(sampled, scorer, stats)
    records = []
    for (prompt, seed, cands), group_scores in zip(sampled, scores):
        if group_scores is not None:
            stats["candidates"] += len(cands.texts)
            stats["length"] += cands.num_tokens
            stats["reward"] += [s for s in group_scores if math.isfinite(s)]
            correct = correctness(cands.texts, prompt.get("answer"), prompt.get("choices"), judge=judge_for(prompt))
            if correct is not None:
                stats["judged"] += len(correct)
                stats["correct"] += sum(correct)
            stats["reward_length"] += [[s, n] for s, n in zip(group_scores, cands.num_tokens) if math.isfinite(s)]
            if cfg.length_penalty:  # length-normalised selection: longer answers must earn their length
                group_scores = [s - cfg.length_penalty * n for s, n in zip(group_scores, cands.num_tokens)]
            sel = select_pairs(cands.texts, group_scores, cfg.rule, cfg.min_gap, cfg.max_pairs_per_prompt, correct)
            for reason, n in sel.dropped.items():
                add_count(stats["candidate_drops"], reason, n)
            if sel.skip_reason:
                add_count(stats["prompt_skips"], sel.skip_reason)
            else:
                stats["prompts_with_pairs"] += 1
            for k, pair in enumerate(sel.pairs):
                records.append(pair_record(prompt, cands.texts, pair, k, {**provenance, "seed": seed}))
                stats["gap"].append(pair.gap)
        if progress is not None:
            progress.update(1)
    stats["pairs"] = len(records)
    return records, stats


def _failure(error: Exception) -> str:
    """How a failed prompt is counted: an image's problem class (`common.images`), else the error's type."""
    return error.problem if isinstance(error, ImageError | RecordError) else type(error).__name__


def _count_failure(stats: dict, reason: str, prompt_id: str, error: Exception) -> None:
    add_count(stats["prompt_skips"], reason)
    if len(stats["skip_examples"]) < MAX_EXAMPLES:
        stats["skip_examples"].append(f"prompt {prompt_id!r}: {reason} ({error})")


def _score(sampled: list, scorer: Scorer, stats: dict) -> list[list[float] | None]:
    """Scores per sampled prompt (empty responses get NaN, never reach the scorer); None where scoring failed."""
    groups, keep = [], []
    for prompt, _, cands in sampled:
        keep.append([i for i, t in enumerate(cands.texts) if t.strip()])
        groups.append(ScoringGroup(list(prompt["prompt"]), list(prompt.get("images") or []),
                                   [cands.texts[i] for i in keep[-1]]))  # fmt: skip
    todo = [g for g, idx in enumerate(keep) if idx]
    results: dict[int, list[float] | None] = {}
    try:
        for g, s in zip(todo, scorer.score_groups([groups[g] for g in todo]), strict=True):
            results[g] = s
    except (RecordError, ValueError):  # find the culprit(s): score the groups one by one
        for g in todo:
            try:
                results[g] = scorer.score_groups([groups[g]])[0]
            except (RecordError, ValueError) as e:
                _count_failure(stats, f"{SCORING_FAILED}: {_failure(e)}", sampled[g][0]["id"], e)
                results[g] = None
    for g, s in results.items():
        if s is not None and len(s) != len(groups[g].responses):
            raise RuntimeError(f"the scorer returned {len(s)} scores for {len(groups[g].responses)} responses")
    out = []
    for g, (_, _, cands) in enumerate(sampled):
        if g in results and results[g] is None:
            out.append(None)
            continue
        full = [math.nan] * len(cands.texts)
        for i, s in zip(keep[g], results.get(g, [])):
            full[i] = float(s)
        out.append(full)
    return out


def merge_chunks(out_dir: Path, n_chunks: int) -> tuple[Path, dict[str, Any]]:
    """Join the finished chunks, in order, into `out_dir/pairs`; return its path and the summed statistics."""
    parts, all_stats = [], []
    for c in range(n_chunks):
        data, stats_path = _chunk_paths(out_dir, c)
        if not stats_path.exists():
            raise RuntimeError(f"chunk {c} is not finished ({stats_path} is missing): rerun the same command")
        stats = json.loads(stats_path.read_text())
        all_stats.append(stats)
        if stats["pairs"]:
            parts.append(datasets.load_from_disk(str(data)))
    if parts:
        features = parts[0].features
        merged = datasets.concatenate_datasets([p.cast(features) if p.features != features else p for p in parts])
    else:
        merged = datasets.Dataset.from_dict({"id": [], "prompt": [], "chosen": [], "rejected": [], "images": []})
    total = merge_stats(all_stats)
    if len(merged) != total["pairs"] or len(set(merged["id"])) != len(merged):
        raise RuntimeError(f"merged {len(merged)} pairs but the chunks report {total['pairs']} (or ids repeat)")
    return write_records(merged, out_dir / "pairs"), total


def build_pairs(cfg: BuildPairsConfig, sampler: Sampler | None = None, scorer: Scorer | None = None) -> Path:
    """Run (or resume) the job described by `cfg`; return the merged `pairs` folder.

    Args:
        cfg: the job's config (validated first).
        sampler / scorer: ready-made backends (tests, a remote scorer); by default built from `cfg`.

    Raises:
        ValueError: an invalid config, or an `output_dir` that holds a different build.
    """
    cfg.validate()
    if scorer is None and not cfg.reward_url:  # a local reward model: its value head is checked before anything
        check_value_head(cfg.reward_model_name_or_path, "reward_model_name_or_path")
    rank, world = rank_and_world()
    read_skips = SkipLog()  # the prompts are read and checked before the folder is claimed and any model loads
    prompts = read_prompts(cfg.prompts, cfg.prompt_format, cfg.image_root, read_skips, cfg.on_bad_record,
                           max_prompts=cfg.max_prompts)  # fmt: skip
    out = prepare_output_dir(cfg, rank)
    n_chunks = math.ceil(len(prompts) / cfg.chunk_size)
    mine = list(shard(n_chunks))
    todo = [c for c in mine if not _chunk_paths(out, c)[1].exists()]
    size = lambda c: min(cfg.chunk_size, len(prompts) - c * cfg.chunk_size)  # noqa: E731
    if todo:
        device = str(resolve_device(cfg.device))
        sampler = sampler or make_sampler(cfg.backend, cfg.policy_name_or_path, cfg.dtype, device, cfg.min_pixels,
                                          cfg.max_pixels, cfg.max_prompt_tokens)  # fmt: skip
        if scorer is None and cfg.reward_url:
            scorer = make_remote_scorer(cfg.reward_url, cfg.score_batch_size)
        scorer = scorer or make_scorer(cfg.reward_model_name_or_path, cfg.dtype, device, cfg.score_batch_size,
                                       cfg.min_pixels, cfg.max_pixels)  # fmt: skip
    bar = tqdm(total=sum(size(c) for c in mine), initial=sum(size(c) for c in mine if c not in todo), unit="prompt",
               desc=f"build_pairs rank {rank}/{world}", position=rank, disable=not cfg.progress or not todo)  # fmt: skip
    n_pairs = 0
    for c in todo:
        chunk = [prompts[i] for i in range(c * cfg.chunk_size, c * cfg.chunk_size + size(c))]
        records, stats = process_chunk(chunk, sampler, scorer, cfg, bar)
        data, stats_path = _chunk_paths(out, c)
        if records:
            write_records(records, data)
        write_text_atomic(
            stats_path, json.dumps({"chunk": c, **stats}, sort_keys=True)
        )  # last: marks the chunk finished
        n_pairs += len(records)
        bar.set_postfix(pairs=n_pairs)
    bar.close()
    barrier()
    pairs = out / "pairs"
    if rank == 0:
        pairs, total = merge_chunks(out, n_chunks)
        meta = {"output": str(pairs), "world_size": world, "chunks": n_chunks}
        report = write_report(out, total, read_skips.to_dict(), len(prompts), meta)
        write_run_meta(out, [cfg], pairs=total["pairs"], prompts=len(prompts))
        if cfg.report_to == "wandb":
            log_to_wandb(report, total, out, cfg.wandb_project, cfg.run_name or out.name, asdict(cfg))
    barrier()
    return pairs
