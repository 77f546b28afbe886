"""`RewardDataConfig`: what the reward-data job (`data_builders.reward_data.job.build_reward_data`) reads.

Sources, stages and benchmarks are YAML lists of mappings (JSON strings on the command line), like
`reward.config.RewardConfig.stages`::

    sources:
      - {name: rlaif_v, format: rlaif_v, path: openbmb/RLAIF-V-Dataset, weight: 1.0}   # hub id: the local HF cache
      - {name: vlfeedback, format: vlfeedback, path: data/vlfeedback_80k.jsonl, image_root: data/merged_images.zip,
         options: {aspects: [Helpfulness], min_gap: 1.0}}
    stages:
      - {name: multimodal, sources: [rlaif_v, vlfeedback]}
      - {name: with_text, sources: [rlaif_v, vlfeedback, skywork], text_only_share: 0.3}
    benchmarks:
      - {name: vl_rewardbench, path: data/VL-RewardBench/test.parquet}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from common.config_checks import model_path_problems, output_dir_problems, raise_problems
from data_builders.reward_data.hub import HubSnapshotError, is_hub_id, source_files
from data_builders.reward_data.readers import FORMATS
from reward.bench import BENCHMARKS as BENCHMARK_READERS  # the one import of the benchmark readers


@dataclass
class SourceSpec:
    """One public preference set: where it is, how to read it, and how much of it a stage takes."""

    name: str
    format: str
    path: str  # a local file or folder, or a hub dataset id `owner/name` (its snapshot in the local HF cache)
    revision: str | None = None  # hub id only: the snapshot's revision (branch, tag or commit; default main)
    data_files: str | None = None  # hub id only: the file or folder inside the snapshot the reader reads
    subset: str | None = None  # hub id only: a config whose files are in the snapshot's folder of that name
    image_root: str | None = None  # folder, .zip or .tar that relative image paths resolve in (default: file's folder)
    weight: float = 1.0  # share of the cleaned pairs a stage takes (0.5: a seeded half; 2.0: each twice)
    max_pairs: int | None = None  # cap on the pairs a stage takes from this source
    max_rows: int | None = None  # read only the first N rows (quick runs)
    options: dict[str, Any] = field(default_factory=dict)  # reader options (see readers.py)
    allow_empty: bool = False  # a source that yields no pair is no error
    max_skip_fraction: float | None = (
        None  # this source's bound on the rows skipped for one reason (default: the job's)
    )


@dataclass
class StageSpec:
    """One training stage: which sources it mixes and, optionally, the share of text-only pairs."""

    name: str
    sources: list[str]
    text_only_share: float | None = None


@dataclass
class BenchmarkSpec:
    """An evaluation set to decontaminate against, in a format `reward.bench.read_benchmark` reads."""

    name: str
    path: str


def _parse_list(value: Any, name: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not a JSON list of mappings ({e}): {value!r}") from e
    return value


def _specs(raw: Any, cls: type, name: str, problems: list[str]) -> list:
    if not isinstance(raw, list):
        problems.append(f"{name}: expected a list of mappings, got {type(raw).__name__}")
        return []
    known = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}  # fmt: skip
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"{name}[{i}]: expected a mapping, got {type(item).__name__}")
            continue
        bad = [f"{name}[{i}]: unknown key {k!r} (known: {sorted(known)})" for k in item if k not in known]
        bad += [f"{name}[{i}]: {k} is required" for k in sorted(required - set(item))]
        problems += bad
        if not bad:
            out.append(cls(**item))
    return out


@dataclass
class RewardDataConfig:
    """Read public preference sets, clean them (ambiguous pairs, duplicates, benchmark overlap, weak pairs), and mix
    the rest into one `datasets` folder per training stage."""

    # Fields that do not change what the job writes: a rerun may change them and still resume (common.run_folder).
    NOT_AFFECTING_RESULTS: ClassVar[tuple[str, ...]] = (
        "output_dir", "overwrite_output_dir", "progress", "report_to", "wandb_project", "run_name", "num_proc",
        "device", "score_batch_size", "max_skip_fraction",
        "reward_url",  # the served model counts instead (`job.FilterScorer`)
    )  # fmt: skip
    # Source keys that only decide whether the job fails, never what it writes (left out of the run's identity).
    SOURCE_KEYS_NOT_AFFECTING_RESULTS: ClassVar[tuple[str, ...]] = ("allow_empty", "max_skip_fraction")

    # > inputs
    # (typed `str` for the command line, where they are JSON; YAML gives the lists themselves)
    sources: str | None = field(default=None, metadata={"help": "The sources: a YAML list of mappings (SourceSpec)."})
    stages: str | None = field(default=None, metadata={"help": "The stages: a YAML list of mappings (StageSpec)."})
    benchmarks: str | None = field(
        default=None, metadata={"help": "Evaluation sets to decontaminate against: a YAML list (BenchmarkSpec)."}
    )
    # > cleaning
    drop_ambiguous: bool = field(
        default=True, metadata={"help": "Drop pairs whose chosen equals rejected (normalised) or whose ratings tie."}
    )
    exact_dedup: bool = field(
        default=True, metadata={"help": "Drop pairs equal to an earlier one (normalised text, image pixels)."}
    )
    near_dedup: bool = field(default=True, metadata={"help": "Drop pairs nearly equal to an earlier one."})
    near_text_threshold: float = field(
        default=0.9, metadata={"help": "Near duplicate: MinHash Jaccard of prompt+responses at least this."}
    )
    image_hash_distance: int = field(
        default=6, metadata={"help": "Near-equal images: perceptual hashes (64 bits) at most this many bits apart."}
    )
    num_perm: int = field(default=128, metadata={"help": "MinHash permutations (more: finer estimate, more memory)."})
    decontam_text_threshold: float = field(
        default=0.8, metadata={"help": "Benchmark overlap: prompt MinHash Jaccard at least this (or equal text)."}
    )
    # > surrogate reward-model filter (off without reward_model_name_or_path or reward_url)
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reward model that scores every pair (off when unset)."}
    )
    reward_url: list[str] = field(
        default_factory=list,
        metadata={"help": "Reward server URL(s) (recipes/serve_reward.py) that score instead of a local reward model."},
    )
    filter_min_chosen_score: float | None = field(
        default=None, metadata={"help": "Drop/flag pairs whose chosen score is below this (None: no bound)."}
    )
    filter_min_gap: float | None = field(
        default=0.0, metadata={"help": "Drop/flag pairs whose chosen-minus-rejected gap is below this (None: none)."}
    )
    filter_action: str = field(default="drop", metadata={"help": "'drop' weak pairs, or 'flag' them in `meta`."})
    score_batch_size: int = field(default=8, metadata={"help": "Pairs per reward-model call."})
    dtype: str = field(default="float32", metadata={"help": "Reward model dtype: float32, bfloat16 or float16."})
    device: str = field(default="cpu", metadata={"help": "Reward model device: cpu, cuda or auto."})
    min_pixels: int | None = field(default=None, metadata={"help": "Lower bound on image area (scoring)."})
    max_pixels: int | None = field(default=None, metadata={"help": "Upper bound on image area (scoring)."})
    # > mixing and output
    max_skip_fraction: float = field(
        default=0.5,
        metadata={"help": "A source whose rows skipped for one reason exceed this share fails the build (naming the "
                          "reason and 3 rows); a source's own `max_skip_fraction` or `allow_empty: true` overrides."},
    )  # fmt: skip
    seed: int = field(default=0, metadata={"help": "Seed of the per-stage sampling and order (and MMPR's fractional "
                                                   "repeat_time)."})  # fmt: skip
    output_dir: str = field(default=None, metadata={"help": "Where chunks, stages/<name>/ and the report go."})
    chunk_size: int = field(default=1000, metadata={"help": "Input rows per chunk: the unit of atomic writes/resume."})
    num_proc: int = field(default=1, metadata={"help": "Processes that decode and hash images."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete an output_dir holding a build of other settings or inputs."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    report_to: str = field(default="none", metadata={"help": "'none' or 'wandb' (the report's counts and plots)."})
    wandb_project: str = field(default="vlrm-mpo", metadata={"help": "wandb project (with report_to=wandb)."})
    run_name: str | None = field(default=None, metadata={"help": "wandb run name (default: output_dir's name)."})

    def __post_init__(self):
        self.sources = _parse_list(self.sources, "sources")
        self.stages = _parse_list(self.stages, "stages")
        self.benchmarks = _parse_list(self.benchmarks, "benchmarks")

    def specs(self) -> tuple[list[SourceSpec], list[StageSpec], list[BenchmarkSpec], list[str]]:
        """The parsed sources, stages and benchmarks, and every problem found in them."""
        problems: list[str] = []
        sources = _specs(self.sources, SourceSpec, "sources", problems)
        stages = _specs(self.stages, StageSpec, "stages", problems)
        benchmarks = _specs(self.benchmarks or [], BenchmarkSpec, "benchmarks", problems)
        names = [s.name for s in sources]
        problems += [f"sources: the name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
        for s in sources:
            if s.format not in FORMATS:
                problems.append(f"sources[{s.name}].format={s.format!r}: choose one of {FORMATS}")
            try:
                path, image_root = source_files(s)
            except HubSnapshotError as e:
                problems.append(str(e))
            else:
                if not path.exists():
                    problems.append(f"sources[{s.name}].path: {s.path!r} does not exist (nor is it a hub id "
                                    "'owner/name')")  # fmt: skip
                if image_root and not image_root.exists():
                    problems.append(f"sources[{s.name}].image_root: {s.image_root!r} does not exist")
            hub_only = [k for k in ("revision", "data_files", "subset") if getattr(s, k)]
            if hub_only and not is_hub_id(s.path):
                problems.append(f"sources[{s.name}]: {', '.join(hub_only)} apply to a hub id only; {s.path!r} is a "
                                "local path (point path at the file or folder itself)")  # fmt: skip
            if s.max_skip_fraction is not None and not 0 <= s.max_skip_fraction <= 1:
                problems.append(f"sources[{s.name}].max_skip_fraction={s.max_skip_fraction}: must be in [0, 1]")
            if isinstance(s.weight, bool) or not isinstance(s.weight, int | float) or s.weight <= 0:
                problems.append(f"sources[{s.name}].weight={s.weight!r}: must be a positive number")
        for st in stages:
            problems += [f"stages[{st.name}].sources: unknown source {n!r}" for n in st.sources if n not in names]
            if st.text_only_share is not None and not 0 < st.text_only_share < 1:
                problems.append(f"stages[{st.name}].text_only_share={st.text_only_share}: must be in (0, 1)")
        for b in benchmarks:
            if b.name not in BENCHMARK_READERS:
                problems.append(f"benchmarks: unknown benchmark {b.name!r}; choose one of {sorted(BENCHMARK_READERS)}")
            if not Path(b.path).exists():
                problems.append(f"benchmarks[{b.name}].path: {b.path!r} does not exist")
        return sources, stages, benchmarks, problems

    def validate(self) -> None:
        """Check every field at once; raise one ValueError listing all problems."""
        sources, stages, _, problems = self.specs()
        if not sources:
            problems.append("sources: give at least one source (see data_builders/reward_data/config.py)")
        if not stages:
            problems.append("stages: give at least one stage")
        problems += output_dir_problems(self.output_dir)
        if self.reward_url and self.reward_model_name_or_path:
            problems.append("reward_model_name_or_path and reward_url: give one (the filter's reward model is either "
                            "local or a server)")  # fmt: skip
        problems += model_path_problems(self.reward_model_name_or_path, "reward_model_name_or_path", required=False)
        choices = {"filter_action": ("drop", "flag"), "report_to": ("none", "wandb"),
                   "dtype": ("float32", "bfloat16", "float16")}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r}: choose one of {allowed}")
        for name in ("chunk_size", "num_proc", "score_batch_size", "num_perm"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be >= 1")
        for name in ("near_text_threshold", "decontam_text_threshold"):
            if not 0 < getattr(self, name) <= 1:
                problems.append(f"{name}={getattr(self, name)}: must be in (0, 1]")
        if not 0 <= self.max_skip_fraction <= 1:
            problems.append(f"max_skip_fraction={self.max_skip_fraction}: must be in [0, 1]")
        if not 0 <= self.image_hash_distance <= 64:
            problems.append(f"image_hash_distance={self.image_hash_distance}: must be in [0, 64]")
        raise_problems("RewardDataConfig", problems)

    def identity(self) -> RewardDataConfig:
        """This config as the run's identity sees it (`common.run_folder`): the sources without the keys that only
        decide whether the build fails, so that a rerun adding `allow_empty: true` resumes."""
        drop = self.SOURCE_KEYS_NOT_AFFECTING_RESULTS
        sources = [{k: v for k, v in s.items() if k not in drop} if isinstance(s, dict) else s
                   for s in self.sources or []]  # fmt: skip
        return dataclasses.replace(self, sources=sources)

    def inputs(self) -> dict[str, str]:
        """The files the output depends on, by name (their content is fingerprinted by `common.run_folder`); a hub
        source's are those of its local snapshot."""
        sources, _, benchmarks, _ = self.specs()
        out: dict[str, Any] = {}
        for s in sources:
            path, image_root = source_files(s)
            out[f"source:{s.name}"] = str(path)
            if image_root:
                out[f"images:{s.name}"] = str(image_root)
        out.update({f"benchmark:{b.name}": b.path for b in benchmarks})
        if self.reward_model_name_or_path:
            out["reward_model"] = self.reward_model_name_or_path
        return out
