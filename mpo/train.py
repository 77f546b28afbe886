"""`train_mpo(cfg)`: the MPO job from records on disk to a saved model that `transformers` loads.

Order: validate the config; claim the output folder (a finished run of the same length has nothing to do; a longer one
continues from the final checkpoint); read and validate the pairs; precompute (or load) the reference log-probs; load the
policy (under ZeRO-3 inside `zero.Init`) and freeze / wrap it with LoRA; train with `MPOTrainer` (resuming if asked);
save the final model (LoRA merged into the base weights, the adapter kept beside it); run the evaluation hook; write
`run_meta.json`. Every rank calls it under a launcher.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, TrainerCallback, set_seed

from common.checkpoints import CheckpointedState
from common.cli import write_run_meta
from common.distributed import print0, shutdown
from common.io import SkipLog, read_records
from common.processor import load_processor
from common.record_checks import flag_pairs
from common.run_folder import claim_output_dir, is_finished, release_output_dir
from common.scoring import Scorer
from common.tracking import finish_wandb
from common.vl_training import freeze_parts, lora_config
from mpo.config import MPOConfig
from mpo.evaluate import evaluate_policy
from mpo.ref_logps import attach_ref_logps, without_zero3_init
from mpo.trainer import MPOTrainer


def load_policy(cfg: MPOConfig, dtype: torch.dtype):
    """The policy, frozen in parts or wrapped with LoRA adapters on the language model as configured."""
    model = AutoModelForImageTextToText.from_pretrained(cfg.model_name_or_path, dtype=dtype)
    freeze_parts(model, cfg.freeze_vision_tower, cfg.freeze_merger, cfg.freeze_language_model)
    if not cfg.use_lora:
        return model
    from peft import get_peft_model

    # ZeRO-3 gathers parameters in the dtype of the first one: keep adapters in the base dtype (as TRL does).
    zero3 = cfg.deepspeed_plugin is not None and cfg.deepspeed_plugin.zero_stage == 3
    set_seed(cfg.seed)  # the adapters' initialisation, the same whatever ran before in this process
    model = get_peft_model(model, lora_config(cfg), autocast_adapter_dtype=not zero3)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


class _EvalEveryNSteps(CheckpointedState):
    """Run the evaluation hook before the first step (the starting policy) and every `every` steps, keeping
    `history` (`{"step", **metrics}` per evaluation) in the checkpoints, so a resumed run keeps the earlier ones."""

    def __init__(self, every: int, run):
        self.every, self.run, self.history = every, run, []

    def state(self) -> dict:
        return {"args": {}, "attributes": {"history": self.history}}

    def evaluate(self, step: int) -> dict:
        metrics = self.run(step)
        self.history.append({"step": step, **metrics})
        return metrics

    def on_train_begin(self, args, state, control, **kwargs):
        if self.every and state.global_step == 0:
            self.evaluate(0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.evaluate(state.global_step)


def _save_final(trainer: MPOTrainer, cfg: MPOConfig, processor, dtype: torch.dtype) -> Path:
    out = Path(cfg.output_dir)
    if not cfg.use_lora:
        trainer.save_model(str(out))
        zero3 = cfg.deepspeed_plugin is not None and cfg.deepspeed_plugin.zero_stage == 3
        if zero3 and trainer.is_world_process_zero():
            # transformers 5 writes ZeRO-3's consolidated weights under other key names ("model.model.layers.*")
            # and keeps them when a model loaded from them is saved again; it reads them back, other tools may not.
            with without_zero3_init():  # rank 0 alone: no collective zero.Init
                loaded = AutoModelForImageTextToText.from_pretrained(str(out), dtype=dtype)
                with torch.device("meta"):  # a model that never saw the odd names saves the standard ones
                    model = AutoModelForImageTextToText.from_config(loaded.config, dtype=dtype)
            model.load_state_dict(loaded.state_dict(), assign=True)
            tmp = out / ".standard-layout"
            model.save_pretrained(str(tmp))
            for f in tmp.iterdir():
                os.replace(f, out / f.name)
            tmp.rmdir()
    else:
        trainer.save_model(str(out / "adapter"))
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():  # merge on a fresh copy of the base: works for any ZeRO stage
            from peft import PeftModel

            with without_zero3_init():  # rank 0 alone: no collective zero.Init
                base = AutoModelForImageTextToText.from_pretrained(cfg.model_name_or_path, dtype=dtype)
            PeftModel.from_pretrained(base, str(out / "adapter")).merge_and_unload().save_pretrained(str(out))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
    trainer.accelerator.wait_for_everyone()
    return out


def train_mpo(
    cfg: MPOConfig,
    scorer: Scorer | None = None,
    callbacks: list[TrainerCallback] | None = None,
    load_scorer: Callable[[], Scorer] | None = None,
) -> Path:
    """Train a Qwen2.5-VL policy with MPO; returns the output folder (final model, processor, `run_meta.json`).

    Ends by tearing down the DeepSpeed engine and the process group (`common.distributed.shutdown`), so under a
    launcher it is the last distributed call of the process.

    Args:
        cfg: the job's config (`MPOConfig`).
        scorer: optional reward scorer for the evaluation hook (see `mpo.evaluate`).
        load_scorer: or what loads it, called once the data is checked and the folder claimed (fail fast).
        callbacks: extra `TrainerCallback`s.

    Raises:
        ValueError: an invalid config (every problem listed).
        common.run_folder.RunFolderError: `output_dir` holds another run (or a longer one), or a live run holds it.
        common.schema.RecordError: a bad record with `on_bad_record="raise"`.
    """
    cfg.validate()
    out = Path(cfg.output_dir)
    # fail fast: the data is read and checked before the folder is claimed and before any model loads
    skipped = SkipLog()
    dataset = read_records(cfg.train_data, "preference", on_bad_record=cfg.on_bad_record, skipped=skipped)
    if skipped.total:
        print0(f"skipped {skipped.total} bad records: {dict(skipped.counts)}")
    flagged = SkipLog()  # trained on, but duplicate ids or chosen == rejected
    flag_pairs(dataset, cfg.train_data, flagged)
    if flagged.total:
        print0(f"warning, {flagged.total} suspicious pairs kept: {dict(flagged.counts)}")
    eval_pairs = read_records(cfg.eval_pairs) if cfg.eval_pairs else None
    eval_prompts = read_records(cfg.eval_prompts, "prompt") if cfg.eval_prompts else None
    inputs = {"model": cfg.model_name_or_path, "reference model": cfg.ref_model_name_or_path,
              "train_data": cfg.train_data, "eval_pairs": cfg.eval_pairs, "eval_prompts": cfg.eval_prompts}  # fmt: skip
    same_run = claim_output_dir(out, [cfg], inputs, overwrite=cfg.overwrite_output_dir)
    explicit_checkpoint = str(cfg.resume_from_checkpoint or "").lower() not in ("", "true", "false", "none")
    if same_run and is_finished(out, cfg) and not explicit_checkpoint:
        print0(f"output_dir {out} holds this finished run: nothing to do (a larger max_steps or num_train_epochs "
               "continues it; --overwrite_output_dir true starts over)")  # fmt: skip
        release_output_dir(out)
        shutdown()
        return out
    if load_scorer is not None:
        scorer = load_scorer()
    if cfg.wandb_project:
        os.environ.setdefault("WANDB_PROJECT", cfg.wandb_project)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    processor = load_processor(cfg.model_name_or_path, cfg.min_pixels, cfg.max_pixels)

    dataset, ref_report = attach_ref_logps(
        dataset,
        cfg.train_data,
        cfg.ref_model_name_or_path or cfg.model_name_or_path,
        processor,
        cfg.max_length,
        dtype,
        cfg.ref_logps_dir,
        cfg.ref_batch_size,
    )
    print0(f"reference log-probs: {'cached' if ref_report['cached'] else 'computed'} -> {ref_report['path']}")

    def run_eval(step: int) -> dict:
        metrics = evaluate_policy(
            trainer.model, processor, eval_pairs, eval_prompts, scorer, cfg.eval_max_new_tokens,
            cfg.per_device_eval_batch_size, cfg.max_length,
        )  # fmt: skip
        print0(f"eval at step {step}: {metrics}")
        return metrics

    evals = _EvalEveryNSteps(cfg.eval_every_n_steps if eval_pairs or eval_prompts else 0, run_eval)
    callbacks = [evals, *(callbacks or [])]
    trainer = MPOTrainer(load_policy(cfg, dtype), cfg, dataset, processor, callbacks=callbacks)
    # a rerun of the same run resumes from its newest complete checkpoint, as the reward trainer does
    trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint or (True if same_run else None))
    _save_final(trainer, cfg, processor, dtype)
    final_eval = {}
    if eval_pairs or eval_prompts:  # the every-N hook may have just run at this step
        done = evals.history and evals.history[-1]["step"] == trainer.state.global_step
        final_eval = evals.history[-1] if done else evals.evaluate(trainer.state.global_step)

    if trainer.is_world_process_zero():
        keys = ("step", "loss", "loss/dpo", "loss/bco", "loss/sft", "bco_delta", "rewards/accuracies")
        losses = [{k: h[k] for k in keys if k in h} for h in trainer.state.log_history if "loss" in h]
        (out / "mpo_history.json").write_text(json.dumps({"train": losses, "eval": evals.history}, indent=2))
        write_run_meta(out, [cfg], pairs=len(dataset), world_size=cfg.world_size, skipped=skipped.to_dict(), flagged=flagged.to_dict(), ref_logps=ref_report,
                       bco_delta=trainer.delta.value, eval=final_eval, resumed_from=trainer.resumed_from)  # fmt: skip
    finish_wandb()
    release_output_dir(out)
    shutdown(trainer)
    return out
