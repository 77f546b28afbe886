"""The policy evaluation job behind `recipes/eval_policy.py`: greedy answers to policy benchmarks, judged by each
benchmark's official rule, reported per category.

Greedy answers come from `data_builders.sampling` (`greedy`): the shared-prefill path with transformers
(`backend="hf"`, CPU or GPU), or vLLM (`backend="vllm"`, GPU, where installed). Writes to `output_dir`:
`predictions.jsonl` (one row per question: response, extracted answer, verdict, category fields), `metrics.json`,
`results.md`, `categories.png` and `run_meta.json`; with `report_to="wandb"`, a wandb run with the same figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common.cli import write_run_meta
from common.config_checks import model_path_problems, output_dir_problems, raise_problems
from common.errors import InputError
from common.io import SkipLog
from common.tracking import pyplot, save_figure, wandb_run
from data_builders.sampling import Candidates, HFSampler, VLLMSampler
from policy_eval import BENCHMARKS, BenchmarkItem, breakdown, read_benchmark
from policy_eval.mmmu import MAX_IMAGES


class Answerer(Protocol):
    """What the job needs from a generation backend (`data_builders.sampling.HFSampler` / `VLLMSampler`)."""

    def greedy(self, prompts: Sequence[Mapping[str, Any]], max_new_tokens: int) -> list[Candidates]: ...


@dataclass
class EvalPolicyConfig:
    """Which policy, which benchmarks on which data, how long the answers may be, and where the report goes."""

    model: str = field(default=None, metadata={"help": "The policy: a local folder (or a hub id where the hub is reachable).",
                                               "aliases": ["--model_name_or_path"]})  # fmt: skip
    benchmarks: str = field(
        default="mmstar,mathvista_testmini",
        metadata={"help": f"Comma-separated benchmark names, from {sorted(BENCHMARKS)}."},
    )
    data: list[str] = field(
        default_factory=list,
        metadata={"help": "NAME=PATH per benchmark: a .parquet file, a folder of the hub snapshot's shards, or a hub "
                  "dataset id; a benchmark without one is read from its hub id (HF cache when offline)."},
    )  # fmt: skip
    output_dir: str = field(default=None, metadata={"help": "Where predictions, metrics, table and chart go."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N questions of each benchmark."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest answer in tokens (reasoning needs room)."})
    backend: str = field(default="hf", metadata={"help": "hf (transformers, shared prefill) or vllm (GPU)."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto (hf backend)."})
    min_pixels: int | None = field(default=None, metadata={"help": "Processor's smallest image area (pixels)."})
    max_pixels: int | None = field(default=None, metadata={"help": "Processor's largest image area (pixels)."})
    on_bad_record: str = field(
        default="raise",
        metadata={"help": "raise: stop at a malformed row (named); skip: drop it and count the reason in the report."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a report already in output_dir."})
    report_to: str = field(default="none", metadata={"help": "none or wandb (WANDB_MODE=offline without network)."})
    run_name: str | None = field(default=None, metadata={"help": "wandb run name (default: model folder name)."})

    def benchmark_names(self) -> list[str]:
        return [name.strip() for name in (self.benchmarks or "").split(",") if name.strip()]

    def data_paths(self) -> dict[str, str]:
        """{benchmark: where its data is}: the `--data` entries, else the benchmark's hub id."""
        given = dict(entry.split("=", 1) for entry in self.data if "=" in entry)
        return {name: given.get(name, BENCHMARKS[name].HUB_ID) for name in self.benchmark_names() if name in BENCHMARKS}

    def validate(self) -> None:
        """Every problem at once, each with the flag to set."""
        names = self.benchmark_names()
        problems = model_path_problems(self.model, "model") + output_dir_problems(self.output_dir)
        if not names:
            problems.append("--benchmarks: name at least one benchmark")
        problems += [
            f"--benchmarks: unknown {n!r}; choose from {sorted(BENCHMARKS)}" for n in names if n not in BENCHMARKS
        ]
        for entry in self.data:
            name = entry.split("=", 1)[0]
            if "=" not in entry:
                problems.append(f"--data {entry!r}: expected NAME=PATH")
            elif name not in names:
                problems.append(f"--data {entry!r}: {name!r} is not among --benchmarks {names}")
        if self.output_dir and (Path(self.output_dir) / "metrics.json").exists() and not self.overwrite_output_dir:
            problems.append(f"--output_dir {self.output_dir} already holds a report; pass --overwrite_output_dir")
        choices = {"backend": ("hf", "vllm"), "report_to": ("none", "wandb"), "on_bad_record": ("raise", "skip"),
                   "dtype": ("float32", "bfloat16", "float16")}  # fmt: skip
        problems += [
            f"--{k} {getattr(self, k)!r}: choose one of {v}" for k, v in choices.items() if getattr(self, k) not in v
        ]
        if self.limit is not None and self.limit < 1:
            problems.append(f"--limit {self.limit}: must be >= 1")
        if self.max_new_tokens < 1:
            problems.append(f"--max_new_tokens {self.max_new_tokens}: must be >= 1")
        raise_problems("policy evaluation config", problems)


def make_answerer(cfg: EvalPolicyConfig) -> Answerer:
    """The generation backend the config asks for (the model loads here)."""
    if cfg.backend == "vllm":
        return VLLMSampler(cfg.model, dtype=cfg.dtype, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                           max_images_per_prompt=MAX_IMAGES)  # fmt: skip
    return HFSampler(
        cfg.model, dtype=cfg.dtype, device=cfg.device, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
    )


def answer_rows(name: str, items: list[BenchmarkItem], answerer: Answerer, max_new_tokens: int,
                batch_size: int = 64) -> list[dict[str, Any]]:  # fmt: skip
    """One prediction row per item: its greedy response, the extracted answer and the verdict of the official rule
    (asked `batch_size` questions at a time: vLLM batches them; progress printed per batch)."""
    module, rows = BENCHMARKS[name], []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        for item, out in zip(batch, answerer.greedy([item.record for item in batch], max_new_tokens)):
            extracted, correct = module.score(out.texts[0], item)
            rows.append({"benchmark": name, "id": item.record["id"], "answer": item.record["answer"],
                         "response": out.texts[0], "extracted": extracted, "correct": bool(correct),
                         "num_tokens": out.num_tokens[0], **item.fields})  # fmt: skip
        print(f"{name}: {len(rows)}/{len(items)} answered", flush=True)
    return rows


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown_report(model_name: str, metrics: Mapping[str, Mapping[str, Any]], skipped: Mapping[str, dict]) -> str:
    """The summary table (one row per benchmark), then each benchmark's category tables."""
    lines = [f"# Policy benchmarks: {model_name}", "", "| benchmark | accuracy | correct / total | skipped rows |",
             "|---|---|---|---|"]  # fmt: skip
    for name, m in metrics.items():
        lines.append(f"| {name} | {_pct(m['overall'])} | {m['correct']} / {m['total']} | {skipped[name]['total']} |")
    if "mathvista_testmini" in metrics:
        lines += ["", "MathVista: answers are extracted by rule (no GPT extraction as in the official pipeline); "
                  "see docs/evaluation.md."]  # fmt: skip
    for name, m in metrics.items():
        for key, values in m["by"].items():
            lines += ["", f"## {name}: by {key}", "", "| value | accuracy | correct / total |", "|---|---|---|"]
            lines += [f"| {v} | {_pct(c['accuracy'])} | {c['correct']} / {c['total']} |" for v, c in values.items()]
    return "\n".join(lines) + "\n"


def category_chart(metrics: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """One panel per benchmark: overall accuracy, then its first breakdown field's values (percent)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], metrics.items()):
        first = next(iter(m["by"].values()), {})
        labels = ["overall", *first]
        ax.bar(range(len(labels)), [100 * m["overall"]] + [100 * c["accuracy"] for c in first.values()],
               color=["tab:blue"] + ["tab:gray"] * len(first))  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
        ax.set(ylim=(0, 100), ylabel="accuracy (%)", title=name)
    save_figure(fig, path)
    return path


def evaluate_policy(cfg: EvalPolicyConfig, answerer: Answerer | None = None) -> dict[str, Any]:
    """Run the benchmarks and write the report (module docstring); return `metrics.json`'s content.

    Args:
        answerer: a ready backend (tests: scripted answers); by default the one `cfg` describes.
    """
    cfg.validate()
    skipped = {name: SkipLog() for name in cfg.benchmark_names()}
    items = {name: read_benchmark(name, path, cfg.limit, cfg.on_bad_record, skipped[name])
             for name, path in cfg.data_paths().items()}  # fmt: skip
    for name, read in items.items():
        if not read:
            raise InputError(f"{name}: no question left to answer (skipped: {skipped[name].to_dict()})")
    out_dir = Path(cfg.output_dir)  # claimed once every benchmark's data is read and checked, before the model loads
    out_dir.mkdir(parents=True, exist_ok=True)
    answerer = answerer or make_answerer(cfg)
    start, metrics, rows = time.perf_counter(), {}, []
    for name, read in items.items():
        answered = answer_rows(name, read, answerer, cfg.max_new_tokens)
        metrics[name] = breakdown(answered, BENCHMARKS[name].BREAKDOWN)
        rows += answered
        print(f"{name}: {_pct(metrics[name]['overall'])} ({metrics[name]['correct']}/{metrics[name]['total']})")
    seconds = time.perf_counter() - start
    with open(out_dir / "predictions.jsonl", "w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    model_name = Path(str(cfg.model).rstrip("/")).name
    report = {"model": cfg.model, "benchmarks": metrics, "data": cfg.data_paths(), "answer_seconds": seconds,
              "skipped": {name: log.to_dict() for name, log in skipped.items()}}  # fmt: skip
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_report(model_name, metrics, report["skipped"])
    (out_dir / "results.md").write_text(table)
    chart = category_chart(metrics, out_dir / "categories.png")
    write_run_meta(out_dir, [cfg], n_items={n: len(r) for n, r in items.items()}, answer_seconds=seconds)
    if cfg.report_to == "wandb":
        _log_wandb(cfg, model_name, metrics, table, chart)
    return report


def _log_wandb(cfg: EvalPolicyConfig, model_name: str, metrics: Mapping, table: str, chart: Path) -> None:
    import wandb

    flat = {f"{name}/overall": m["overall"] for name, m in metrics.items()}
    flat.update({f"{name}/{key}/{value}": cell["accuracy"] for name, m in metrics.items()
                 for key, values in m["by"].items() for value, cell in values.items()})  # fmt: skip
    with wandb_run(cfg.run_name or f"{model_name}-policy-eval", vars(cfg), cfg.output_dir, job_type="eval") as run:
        run.log({**flat, "categories": wandb.Image(str(chart))})
        run.summary["results_md"] = table
