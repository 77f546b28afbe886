"""Train a VL reward model in stages on the transformers `Trainer` (DeepSpeed, wandb, checkpoints and resume).

`train_reward_model(cfg)` runs `cfg`'s stages in order. Stage `k` loads the model stage `k-1` exported (stage 1 loads
`cfg.model_name_or_path`), trains it on its mixture with one forward per step for chosen and rejected together,
evaluates `cfg.eval_datasets`, and exports `<output_dir>/<stage>/model` in the released Skywork-VL-Reward format.
Run the same command again after a kill: finished stages are skipped and the current one resumes from its last
checkpoint (`<output_dir>/<stage>/checkpoint-N`, written every `save_steps`). A rerun with a longer stage (a larger
`max_steps` or `num_train_epochs`, for the run or in `stages`) continues that stage from its final checkpoint and
trains every later stage again from the new weights.

Fail fast: the config is checked, then the data of the first stage to train and the evaluation data are read and
checked, then `output_dir` is claimed, then the model loads. A later stage reads its data before loading its model.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import ProcessorMixin, Trainer, set_seed

from common.checkpoints import CompleteCheckpointsMixin
from common.cli import write_run_meta
from common.distributed import barrier, is_main_process, print0
from common.io import SkipLog
from common.processor import load_processor
from common.run_folder import claim_output_dir, is_finished, release_output_dir
from common.tracking import finish_wandb
from common.vl_training import freeze_parts, lora_config, model_part
from reward.collator import RewardCollator
from reward.config import RewardConfig, StageConfig
from reward.data import eval_dataset, stage_dataset
from reward.loss import pairwise_reward_loss
from reward.model import VLRewardModel, is_reward_checkpoint, load_reward_model, save_reward_model

SUMMARY_FILE = "stage_summary.json"  # written last into a stage's export: its presence marks the stage done


def trainable_counts(model) -> dict[str, int]:
    """Trainable parameters per part (`lora` for adapters), full sizes even when ZeRO-3 has partitioned them."""
    counts: dict[str, int] = defaultdict(int)
    for name, param in model.named_parameters():
        part = "lora" if ".lora_" in name else model_part(name)
        counts[part] += getattr(param, "ds_numel", param.numel()) if param.requires_grad else 0
    return dict(counts)


def add_lora(model: VLRewardModel, cfg: RewardConfig):
    """Wrap the model with LoRA adapters on the LM; the head (and the merger unless frozen) train in full."""
    from peft import get_peft_model

    return get_peft_model(
        model, lora_config(cfg, modules_to_save=["v_head"] + ([] if cfg.freeze_merger else ["merger"]))
    )


class VLRewardTrainer(CompleteCheckpointsMixin, Trainer):
    """`Trainer` with the pairwise loss over `[chosen; rejected]` batches and reward metrics in the logs
    (`loss`, `accuracy`, `margin`, `chosen_reward`, `rejected_reward`; `eval_*` when evaluating). Checkpoints are
    marked complete, resumed from the newest complete one and loaded strictly (`common.checkpoints`)."""

    def __init__(self, *args, center_rewards_coefficient: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.center_rewards_coefficient = center_rewards_coefficient
        self._sums = {"train": defaultdict(float), "eval": defaultdict(float)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        margin = inputs.pop("margin", None)
        rewards = model(**inputs).rewards
        chosen, rejected = rewards.chunk(2)  # the batch is [chosen; rejected]
        out = pairwise_reward_loss(chosen, rejected, margin, self.center_rewards_coefficient)
        pairs = self.accelerator.gather_for_metrics(torch.stack([chosen, rejected], dim=1).detach())
        sums = self._sums["train" if model.training else "eval"]
        sums["accuracy"] += (pairs[:, 0] > pairs[:, 1]).sum().item()
        sums["margin"] += (pairs[:, 0] - pairs[:, 1]).sum().item()
        sums["chosen_reward"] += pairs[:, 0].sum().item()
        sums["rejected_reward"] += pairs[:, 1].sum().item()
        sums["n"] += pairs.shape[0]
        return (out.loss, rewards) if return_outputs else out.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, dict(inputs))
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._sums[mode]
        if sums["n"]:
            prefix = "eval_" if mode == "eval" else ""
            logs.update({f"{prefix}{k}": v / sums["n"] for k, v in sums.items() if k != "n"})
        sums.clear()
        super().log(logs, start_time)


def merge_lora_state_dict(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A peft LoRA model's full state dict as the plain model's: `W + scaling * B @ A` for adapted layers, the trained
    copy of `modules_to_save`, peft's prefixes dropped. Works on gathered ZeRO-3 shards (no model is built)."""
    merged = {}
    for key, value in state_dict.items():
        key = key.removeprefix("base_model.model.")
        if ".lora_" in key or ".original_module." in key:
            continue
        if ".base_layer." in key:
            module, name = key.split(".base_layer.")
            if name == "weight":
                a, b = state_dict[f"base_model.model.{module}.lora_A.default.weight"], state_dict[
                    f"base_model.model.{module}.lora_B.default.weight"]  # fmt: skip
                value = value + scaling * (b.float() @ a.float()).to(value.dtype)
            key = f"{module}.{name}"
        merged[key.replace(".modules_to_save.default.", ".")] = value
    return merged


def export_reward_model(trainer: Trainer, processor, path: Path, cfg: RewardConfig) -> None:
    """Save the trained model in the released format; under ZeRO-3 the shards are gathered first (all ranks call)."""
    engine = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    state_dict = trainer.accelerator.get_state_dict(engine)
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        if cfg.use_lora:
            state_dict = merge_lora_state_dict(state_dict, cfg.lora_alpha / cfg.lora_r)
            model = model.get_base_model()
        save_reward_model(model, processor, path, state_dict=state_dict)
    trainer.accelerator.wait_for_everyone()


@dataclass
class StageData:
    """A stage's training mixture and the evaluation data, read and checked (with the processor that measured them)."""

    stage: StageConfig
    processor: ProcessorMixin
    train: Dataset
    eval: Dataset | None
    skipped: SkipLog = field(default_factory=SkipLog)
    flagged: SkipLog = field(default_factory=SkipLog)  # trained on, but duplicate ids or chosen == rejected


def read_stage_data(cfg: RewardConfig, stage: StageConfig, processor_path: str) -> StageData:
    """Read and check `stage`'s data and the evaluation data; no model is loaded (only the processor)."""
    processor = load_processor(processor_path, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    skipped, flagged = SkipLog(), SkipLog()
    train = stage_dataset(stage, cfg, processor, skipped, flagged)
    return StageData(stage, processor, train, eval_dataset(cfg, processor, skipped), skipped, flagged)


def _train_stage(cfg: RewardConfig, data: StageData, init_path: str, callbacks) -> tuple[Path, dict]:
    stage, processor, train_ds, eval_ds, skipped, flagged = (data.stage, data.processor, data.train, data.eval,
                                                             data.skipped, data.flagged)  # fmt: skip
    args = cfg.for_stage(stage)  # built before the model: under ZeRO-3 it makes from_pretrained partition at load
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model, _ = load_reward_model(init_path, dtype=dtype, head_seed=cfg.head_seed,
                                 min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, new_head_ok=True)  # fmt: skip
    model.always_run_vision = True  # same collectives on every rank under ZeRO-3, text-only batches included
    freeze_parts(model, args.freeze_vision_tower, args.freeze_merger, args.freeze_language_model)
    if cfg.use_lora:
        set_seed(args.seed)  # the adapters' initialisation, the same whatever ran before in this process
        model = add_lora(model, cfg)
        if args.activation_checkpointing:
            model.enable_input_require_grads()
    trainable = trainable_counts(model)
    if flagged.total:
        print0(f"[reward] stage {stage.name}: warning, {flagged.total} suspicious pairs kept: {dict(flagged.counts)}")
    trainer = VLRewardTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=RewardCollator(processor, cfg.max_length),
        processing_class=processor,
        callbacks=list(callbacks),
        center_rewards_coefficient=cfg.center_rewards_coefficient,
    )
    print0(f"[reward] stage {stage.name}: {len(train_ds)} pairs from {init_path}")
    result = trainer.train(resume_from_checkpoint=True)  # the newest complete checkpoint, if any
    metrics = {"train_loss": result.training_loss, "global_step": result.global_step}
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    export = Path(args.output_dir) / "model"
    export_reward_model(trainer, processor, export, cfg)
    summary = {
        "stage": stage.name, "init_from": str(init_path), "n_train_pairs": len(train_ds),
        "n_eval_pairs": len(eval_ds) if eval_ds is not None else 0, "trainable_params": trainable,
        "skipped": skipped.to_dict(), "flagged": flagged.to_dict(), "metrics": metrics, "deepspeed": trainer.is_deepspeed_enabled,
        "world_size": args.world_size, "resumed_from": trainer.resumed_from,
    }  # fmt: skip
    if trainer.is_world_process_zero():
        write_run_meta(export, [args])
        (export / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    print0(f"[reward] stage {stage.name} done: {json.dumps(summary, default=str)}")
    _release(trainer)
    return export, summary


def _release(trainer: Trainer) -> None:
    """Free a finished stage's engine before the next stage builds its own (the process group stays up)."""
    engine = trainer.model_wrapped if trainer.is_deepspeed_enabled else None
    if engine is not None and hasattr(engine, "destroy"):
        engine.destroy()
    trainer.accelerator.free_memory()


def stage_done(export: Path, args: RewardConfig) -> bool:
    """Whether the stage exported at `export` finished at the length `args` (the stage's config) asks for."""
    return is_reward_checkpoint(export) and (export / SUMMARY_FILE).is_file() and is_finished(export, args)


def _claim_output_dir(cfg: RewardConfig) -> None:
    """Claim `output_dir` (`common.run_folder`): a rerun resumes only with the same settings and the same content of
    the base model and every stage's and evaluation's data; anything else is refused, naming what changed."""
    inputs = {"model": cfg.model_name_or_path}
    for stage in cfg.stage_configs():
        inputs.update({f"{stage.name} data {path}": path for path in stage.datasets})
    inputs.update({f"eval data {path}": path for path in cfg.eval_datasets})
    claim_output_dir(cfg.output_dir, [cfg], inputs, overwrite=cfg.overwrite_output_dir)


def train_reward_model(cfg: RewardConfig, callbacks=()) -> Path:
    """Run every stage of `cfg` (skipping finished ones, resuming the interrupted one); return the last export.

    Raises:
        ValueError: the config is invalid (all problems listed), or a stage has no usable pairs.
        common.run_folder.RunFolderError: `output_dir` holds a run of other settings or inputs (the message names
            them; `overwrite_output_dir=True` starts over).
        common.schema.RecordError: a bad record with `on_bad_record="raise"`, naming the record and the field.
    """
    cfg.validate()
    stages = cfg.stage_configs()
    exports = [Path(cfg.output_dir) / stage.name / "model" for stage in stages]
    todo = next((k for k, (stage, export) in enumerate(zip(stages, exports))
                 if not stage_done(export, cfg.for_stage(stage))), len(stages))  # fmt: skip
    first = None
    # the first stage to train: its data is checked before the folder is claimed and before any model loads
    if todo < len(stages):  # stage k starts from stage k-1's export (and its processor)
        first = read_stage_data(cfg, stages[todo], str(exports[todo - 1]) if todo else cfg.model_name_or_path)
    _claim_output_dir(cfg)
    init_path = cfg.model_name_or_path
    for i, (stage, export) in enumerate(zip(stages, exports)):
        if i < todo:  # every stage from the first unfinished one on trains (again) from the new weights
            print0(f"[reward] stage {stage.name} already done: {export}")
        else:
            _drop_later_stages(cfg, stages[i + 1 :])
            data = first if first is not None and first.stage == stage else read_stage_data(cfg, stage, init_path)
            first = None
            export, _ = _train_stage(cfg, data, init_path, callbacks)
        init_path = str(export)
    if "wandb" in (cfg.report_to or []):
        finish_wandb()
    release_output_dir(cfg.output_dir)
    return Path(init_path)


def _drop_later_stages(cfg: RewardConfig, later: list[StageConfig]) -> None:
    """Before a stage trains, delete what the stages after it hold: they started from its old weights (a rerun that
    made this stage longer). The last first, so a kill half way leaves no later stage that looks done."""
    for stage in reversed(later):
        folder = Path(cfg.output_dir) / stage.name
        if folder.exists():
            print0(f"[reward] stage {stage.name}: removing {folder}, trained from the earlier stage's old weights")
            barrier()
            if is_main_process():
                shutil.rmtree(folder)
            barrier()
