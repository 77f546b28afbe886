"""Typed configuration of a reward-model training run: `RewardConfig` (a `TrainingArguments`) and its stages.

A run is a list of stages (the paper: stage 1 multimodal pairs at lr 1e-5, stage 2 with text-only pairs added at
lr 1e-6, two epochs each). Each stage names its datasets with mixing weights and may override the learning rate,
the epochs and the freezing; it starts from the weights the previous stage ended with. In YAML::

    stages:
      - name: multimodal
        datasets: {data/llava_critic_pairs: 1.0, data/rlaif_v_pairs: 1.0}
      - name: with_text
        datasets: {data/llava_critic_pairs: 1.0, data/rlaif_v_pairs: 1.0, data/skywork_pref_80k: 1.0}
        learning_rate: 1.0e-6

On the command line the same list is given as JSON: `--stages '[{"name": "s1", "datasets": {"data/x": 1.0}}]'`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from transformers import TrainingArguments

from common.config_checks import model_path_problems, output_dir_problems, raise_problems
from common.errors import ConfigError
from common.vl_training import VLTrainingFields

FREEZE_FIELDS = ("freeze_vision_tower", "freeze_merger", "freeze_language_model")


@dataclass
class StageConfig:
    """One stage of a run. Fields left `None` take the run's value (`RewardConfig`)."""

    name: str = field(metadata={"help": "Stage name; its checkpoints and final model go to `<output_dir>/<name>/`."})
    datasets: dict[str, float] = field(
        metadata={
            "help": "Preference datasets (.jsonl, .parquet or a `datasets` folder) and their mixing weights: a weight "
            "scales how many of that dataset's records one epoch sees (1.0 all once, 0.5 a seeded half, 2.0 twice)."
        }
    )
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate of this stage."})
    num_train_epochs: float | None = field(default=None, metadata={"help": "Epochs over this stage's mixture."})
    max_steps: int | None = field(default=None, metadata={"help": "If > 0, optimizer steps of this stage (wins)."})
    freeze_vision_tower: bool | None = field(default=None, metadata={"help": "Freeze the ViT blocks."})
    freeze_merger: bool | None = field(default=None, metadata={"help": "Freeze the vision-to-LM projector."})
    freeze_language_model: bool | None = field(
        default=None, metadata={"help": "Freeze the LM (the head still trains)."}
    )


def _stage_from_dict(raw: Any, index: int) -> tuple[StageConfig | None, list[str]]:
    where = f"stages[{index}]"
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a mapping, got {type(raw).__name__}"]
    known = {f.name for f in dataclasses.fields(StageConfig)}
    problems = [f"{where}: unknown key {k!r} (known: {sorted(known)})" for k in raw if k not in known]
    raw = {"name": f"stage{index + 1}", **raw}
    datasets = raw.get("datasets")
    bad = [f"{where}.datasets: expected a non-empty mapping path -> weight, got {datasets!r}"]
    if isinstance(datasets, dict) and datasets:
        bad = [f"{where}.datasets[{path!r}]: the weight must be a positive number, got {weight!r}"
               for path, weight in datasets.items()
               if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0]  # fmt: skip
    if bad:
        return None, problems + bad
    return StageConfig(**{k: v for k, v in raw.items() if k in known}), problems


@dataclass
class RewardConfig(VLTrainingFields, TrainingArguments):
    """Training arguments of a VL reward model (the paper's defaults: lr 1e-5, batch 1, 2 epochs, ViT frozen).

    Everything of `transformers.TrainingArguments` applies (DeepSpeed, checkpointing, `report_to`), per stage; the
    image, bad-record, freezing and LoRA fields are `common.vl_training.VLTrainingFields`, shared with MPO.
    """

    # Besides TrainingArguments' logging/saving/eval cadence fields: what a rerun may change and still resume
    # (common.run_folder). `on_bad_record`: a run that finished with "raise" had no bad record, so "skip" is the same.
    NOT_AFFECTING_RESULTS: ClassVar[tuple[str, ...]] = ("on_bad_record",)
    # Besides max_steps and num_train_epochs: the stages' own lengths may grow too (common.run_folder).
    MAY_GROW: ClassVar[tuple[str, ...]] = ("stages.*.max_steps", "stages.*.num_train_epochs")

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base Qwen2.5-VL / Qwen2-VL checkpoint, or a reward checkpoint to continue from. Required."},
    )
    stages: str | None = field(
        default=None,
        metadata={
            "help": "The stages: a YAML list of mappings (see `StageConfig`), or its JSON string on the command line."
        },
    )
    eval_datasets: list[str] = field(
        default_factory=list, metadata={"help": "Held-out preference datasets evaluated at the end of every stage."}
    )
    head_seed: int = field(default=0, metadata={"help": "Seed of the value head's initialisation (base VLM only)."})
    max_length: int = field(
        default=4096, metadata={"help": "Longest prompt + response in tokens, image tokens included."}
    )
    long_pair_policy: Literal["skip", "truncate_response"] = field(
        default="skip",
        metadata={
            "help": "A pair longer than max_length: 'skip' it (counted), or cut the response tail (pairs whose "
            "prompt and image tokens alone do not fit are still skipped: image tokens are never cut)."
        },
    )
    freeze_vision_tower: bool = field(default=True, metadata={"help": "Freeze the ViT blocks (the paper does)."})
    center_rewards_coefficient: float = field(
        default=0.0, metadata={"help": "Weight c of the centering term c * mean((r+ + r-)^2); 0 is off (~0.01 helps)."}
    )
    # Paper defaults and what this trainer needs, over TrainingArguments' own defaults.
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (the paper's stage 1)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs per stage (the paper: 2)."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Pairs per device per step (paper: 1)."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Pairs per device per eval step."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator needs the raw prompt/chosen/rejected/images."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log loss, accuracy, margin and rewards every N steps."})

    def __post_init__(self):
        self._output_dir_given = self.output_dir  # TrainingArguments would fall back to ./trainer_output
        super().__post_init__()
        try:
            raw = json.loads(self.stages) if isinstance(self.stages, str) else self.stages
        except json.JSONDecodeError as e:
            raise ConfigError(f"stages: not a JSON list of stage mappings ({e}): {self.stages!r}") from e
        self.stages = raw  # kept as plain mappings so the config stays JSON-serialisable

    def stage_configs(self) -> list[StageConfig]:
        """The validated stages (raises like `validate`)."""
        stages, problems = self._stages_and_problems()
        raise_problems("reward training config", problems)
        return stages

    def _stages_and_problems(self) -> tuple[list[StageConfig], list[str]]:
        if not isinstance(self.stages, list) or not self.stages:
            return [], ["stages: give at least one stage with its datasets (see reward/config.py)"]
        stages, problems = [], []
        for i, raw in enumerate(self.stages):
            stage, errs = _stage_from_dict(raw, i)
            problems += errs
            if stage is not None:
                stages.append(stage)
        names = [s.name for s in stages]
        problems += [f"stages: the name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
        return stages, problems

    def validate(self) -> None:
        """Check the whole config before any model load or process-group start; report every problem at once."""
        stages, problems = self._stages_and_problems()
        problems += output_dir_problems(self._output_dir_given)
        problems += model_path_problems(self.model_name_or_path, "model_name_or_path")
        for stage in stages:
            problems += [
                f"stages[{stage.name}].datasets: {p!r} does not exist" for p in stage.datasets if not Path(p).exists()
            ]
        problems += [f"eval_datasets: {p!r} does not exist" for p in self.eval_datasets if not Path(p).exists()]
        if self.max_length < 16:
            problems.append(f"max_length: {self.max_length} is too small")
        if self.remove_unused_columns:
            problems.append("remove_unused_columns: must be False (the collator reads the raw record columns)")
        if self.use_lora and (self.freeze_language_model or not self.freeze_vision_tower):
            problems.append("use_lora: adapters go on the LM and the vision tower stays frozen; set "
                            "freeze_language_model: false and freeze_vision_tower: true")  # fmt: skip
        raise_problems("reward training config", problems)

    def for_stage(self, stage: StageConfig) -> RewardConfig:
        """This config with the stage's overrides applied and `output_dir` set to the stage's folder."""
        overrides = {
            k: getattr(stage, k)
            for k in ("learning_rate", "num_train_epochs", "max_steps") + FREEZE_FIELDS
            if getattr(stage, k) is not None
        }
        out = dataclasses.replace(self, output_dir=str(Path(self.output_dir) / stage.name), **overrides)
        return out
