"""`MPOTrainer`: TRL's `DPOTrainer` with the MPO loss, packed pairs and precomputed reference log-probs.

What it takes from `DPOTrainer`: the metric logging (`log`, `_metrics`), evaluation (`prediction_step`), the
model-card checkpointing, the fused LM head and the DeepSpeed/PEFT handling of `transformers.Trainer`. What it
replaces: `__init__` (TRL refuses precomputed reference log-probs for image data and would load a reference model),
the collator (`mpo.packing.PairCollator`: each image and prompt encoded once per pair, not twice) and `_compute_loss`
(`mpo.loss.mpo_loss`, with BCO's running reward shift `delta`, which TRL >= 0.29 dropped).

`delta` lives in the `RunningDelta` callback, a `common.checkpoints.CheckpointedState`: `Trainer` saves it in each
checkpoint's `trainer_state.json` and it is restored on resume. Every rank folds in the same all-reduced batch mean, so it stays equal
across ranks.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from transformers import ProcessorMixin, Trainer, TrainerCallback
from trl import DPOTrainer
from trl.trainer.utils import disable_dropout_in_model

from common.checkpoints import CheckpointedState, CompleteCheckpointsMixin
from common.distributed import all_reduce_mean
from mpo.config import MPOConfig
from mpo.loss import mpo_loss, update_running_mean
from mpo.packing import BlankImage, PairCollator, base_vlm, ensure_fused_lm_head, pair_logps


class RunningDelta(CheckpointedState):
    """BCO's reward shift: the running mean of the per-step batch means of `beta * s` (starts at 0)."""

    def __init__(self, value: float = 0.0, steps: int = 0):
        self.value, self.steps = value, steps

    def update(self, batch_mean: float) -> float:
        self.value, self.steps = update_running_mean(self.value, self.steps, batch_mean)
        return self.value

    def state(self) -> dict:
        return {"args": {"value": self.value, "steps": self.steps}, "attributes": {}}


class MPOTrainer(CompleteCheckpointsMixin, DPOTrainer):
    """Mixed Preference Optimization on image (and text-only) preference pairs. Checkpoints are marked complete,
    resumed from the newest complete one and loaded strictly (`common.checkpoints`).

    Args:
        model: the policy (a `PreTrainedModel`, or a `PeftModel` for LoRA), already loaded.
        args: an `MPOConfig`.
        train_dataset: preference records with `ref_chosen_logps` / `ref_rejected_logps` columns
            (`mpo.ref_logps.attach_ref_logps`).
        processing_class: the Qwen-VL processor (`common.processor.load_processor`).
        eval_dataset: optional, same columns as `train_dataset`.
        callbacks: extra `TrainerCallback`s.
    """

    _tag_names = ["trl", "mpo"]
    _name = "MPO"

    def __init__(
        self,
        model,
        args: MPOConfig,
        train_dataset: Dataset,
        processing_class: ProcessorMixin,
        eval_dataset: Dataset | None = None,
        callbacks: list[TrainerCallback] | None = None,
    ):
        for split, ds in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if ds is not None and "ref_chosen_logps" not in ds.column_names:
                raise ValueError(f"{split} has no reference log-probs: add them with mpo.ref_logps.attach_ref_logps")
        if not isinstance(processing_class, ProcessorMixin):
            raise TypeError(f"processing_class must be a multimodal processor, got {type(processing_class).__name__}")
        # What the inherited DPOTrainer methods read.
        self._tokenizer = processing_class.tokenizer
        self._is_vlm = self._is_vision_dataset = True
        self.padding_free = False
        self.ref_model = None
        self.precompute_ref_logps = True
        self.aux_loss_enabled = False
        self.maybe_activation_offload_context = contextlib.nullcontext()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.beta = args.beta
        self.loss_weights = tuple(args.loss_weights)

        if is_peft_model(model) and args.gradient_checkpointing and args.deepspeed_plugin is not None:
            if args.deepspeed_plugin.zero_stage == 3:  # as TRL: PEFT + ZeRO-3 needs reentrant checkpointing
                args.gradient_checkpointing_kwargs = {
                    **(args.gradient_checkpointing_kwargs or {}),
                    "use_reentrant": True,
                }
        vlm = base_vlm(model)
        if args.disable_dropout:
            disable_dropout_in_model(model)
        ensure_fused_lm_head(vlm)
        self._rope_index = vlm.model.get_rope_index  # uses the config only: safe under ZeRO-3
        self._blank_image = BlankImage.for_model(vlm.config)
        self._dtype = vlm.dtype

        Trainer.__init__(
            self,
            model=model,
            args=args,
            data_collator=PairCollator(processing_class, args.max_length),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=[RunningDelta(), *(callbacks or [])],
        )

    @property
    def delta(self) -> RunningDelta:
        # `Trainer` replaces the callback object when it restores a checkpoint, so look it up each time.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RunningDelta))

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["id", "prompt", "chosen", "rejected", "images"]
            self._signature_columns += ["ref_chosen_logps", "ref_rejected_logps"]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return super().prediction_step(model, inputs, True, ignore_keys)  # the loss is the whole output

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        logps = pair_logps(model, inputs, self._rope_index, self._dtype, self._blank_image)
        ref_chosen = inputs["ref_chosen_logps"].to(logps.chosen.dtype)
        ref_rejected = inputs["ref_rejected_logps"].to(logps.rejected.dtype)
        if mode == "train":  # fold this step's batch mean (over all ranks) into delta, then use it
            with torch.no_grad():
                rewards = self.beta * torch.cat([logps.chosen - ref_chosen, logps.rejected - ref_rejected])
                self.delta.update(all_reduce_mean(rewards.mean().float()).item())
        out = mpo_loss(
            logps.chosen,
            logps.rejected,
            ref_chosen,
            ref_rejected,
            logps.chosen_lengths,
            delta=self.delta.value,
            beta=self.beta,
            weights=self.loss_weights,
        )
        loss = out.loss

        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        for name, value in (("loss/dpo", out.dpo), ("loss/bco", out.bco), ("loss/sft", out.sft)):
            metrics[name].append(gather(value.detach()).mean().item())
        metrics["bco_delta"].append(self.delta.value)
        chosen_r, rejected_r = gather(out.chosen_rewards), gather(out.rejected_rewards)
        metrics["rewards/chosen"].append(chosen_r.mean().item())
        metrics["rewards/rejected"].append(rejected_r.mean().item())
        metrics["rewards/accuracies"].append((chosen_r > rejected_r).float().mean().item())
        metrics["rewards/margins"].append((chosen_r - rejected_r).mean().item())
        metrics["logps/chosen"].append(gather(logps.chosen.detach()).mean().item())
        metrics["logps/rejected"].append(gather(logps.rejected.detach()).mean().item())
        return (loss, None) if return_outputs else loss
