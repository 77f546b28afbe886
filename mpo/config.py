"""`MPOConfig`: TRL's `DPOConfig` with the MPO loss as default and the options of our MPO job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from trl import DPOConfig

from common.config_checks import model_path_problems, output_dir_problems, raise_problems

MPO_LOSS_TYPES = ["sigmoid", "bco_pair", "sft"]


@dataclass
class MPOConfig(DPOConfig):
    """Configuration of `mpo.train.train_mpo` (and of `MPOTrainer`).

    The MPO loss is `loss_weights[0] * DPO (sigmoid) + loss_weights[1] * BCO (with the running reward shift delta)
    + loss_weights[2] * SFT`, defaults 0.8 / 0.2 / 1.0 and `beta` 0.1 (InternVL's MPO). TRL's `bco_pair` has no
    delta; ours follows the paper (see `mpo.loss`). Reference log-probs are always precomputed once (cached under
    `ref_logps_dir`, default `<output_dir>/ref_logps`, keyed by dataset and reference model), so no reference model
    is held during training.

    > Model and data

    model_name_or_path (`str`): the policy (a local folder or hub id). No default.
    train_data (`str`): preference records (`.jsonl`, `.parquet` or a `datasets` folder) in the toolkit's schema.
    """

    # Besides TrainingArguments' logging/saving/eval cadence fields: what a rerun may change and still resume
    # (common.run_folder). `on_bad_record`: a run that finished with "raise" had no bad record, so "skip" is the same.
    NOT_AFFECTING_RESULTS: ClassVar[tuple[str, ...]] = (
        "on_bad_record", "wandb_project", "eval_every_n_steps", "ref_logps_dir", "ref_batch_size", "dataset_num_proc",
    )  # fmt: skip

    # The MPO loss (TRL's multi-loss fields with MPO's values).
    loss_type: list[str] = field(
        default_factory=lambda: list(MPO_LOSS_TYPES),
        metadata={"help": "Must be ['sigmoid', 'bco_pair', 'sft'] (MPO: preference, quality, generation)."},
    )
    loss_weights: list[float] = field(
        default_factory=lambda: [0.8, 0.2, 1.0],
        metadata={"help": "Weights of the DPO, BCO and SFT terms (MPO paper: 0.8, 0.2, 1.0)."},
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Always true here: reference log-probs are computed once before training and cached."},
    )
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak AdamW learning rate (InternVL MPO: 5e-6)."})

    # Model and data.
    model_name_or_path: str | None = field(default=None, metadata={"help": "The policy to train (folder or hub id)."})
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reference model for the log-ratios; default: the starting policy."}
    )
    train_data: str | None = field(
        default=None, metadata={"help": "Preference records (.jsonl, .parquet or datasets folder) to train on."}
    )
    on_bad_record: str = field(
        default="raise", metadata={"help": "'raise' stops at the first bad record; 'skip' drops and counts it."}
    )
    min_pixels: int | None = field(default=None, metadata={"help": "Lower bound on image area (processor default)."})
    max_pixels: int | None = field(
        default=None, metadata={"help": "Upper bound on image area; fewer pixels = fewer image tokens, less memory."}
    )
    ref_logps_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the precomputed reference log-probs are cached; default '<output_dir>/ref_logps'. Point "
            "several runs on the same data and reference at one folder to compute them once."
        },
    )
    ref_batch_size: int = field(default=4, metadata={"help": "Pairs per forward in the reference log-prob pass."})

    # What trains.
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Freeze the ViT blocks and patch embedding."})
    freeze_merger: bool = field(default=False, metadata={"help": "Freeze the vision-language merger (projector)."})
    freeze_language_model: bool = field(
        default=False, metadata={"help": "Freeze the language model (decoder layers, embeddings and LM head)."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of the weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (higher: more capacity and memory)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Language-model modules that get adapters (names inside the decoder layers)."},
    )

    # Evaluation hook and tracking.
    eval_prompts: str | None = field(
        default=None, metadata={"help": "Held-out prompt records (with answer/choices) scored after training."}
    )
    eval_pairs: str | None = field(
        default=None, metadata={"help": "Held-out preference records: reports how often log p(chosen) > log p(rej)."}
    )
    eval_every_n_steps: int = field(
        default=0,
        metadata={"help": "Also run the evaluation hook before step 1 and every N steps (0: only at the end)."},
    )
    eval_max_new_tokens: int = field(default=16, metadata={"help": "Greedy generation length for eval prompts."})
    wandb_project: str | None = field(
        default=None, metadata={"help": "wandb project (with report_to=wandb); WANDB_MODE=offline works."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete an output_dir holding a run of other settings or inputs, start over."}
    )

    def __post_init__(self):
        self._output_dir_given = self.output_dir  # TrainingArguments would fall back to ./trainer_output
        super().__post_init__()
        if self.resume_from_checkpoint in ("true", "True"):
            self.resume_from_checkpoint = True
        if self.ref_logps_dir is None and self._output_dir_given:
            self.ref_logps_dir = str(Path(self.output_dir) / "ref_logps")  # never beside the (maybe read-only) data

    def validate(self) -> None:
        """Check everything that can be checked before loading anything; one error lists every problem."""
        problems = output_dir_problems(self._output_dir_given)
        problems += model_path_problems(self.model_name_or_path, "model_name_or_path")
        problems += model_path_problems(self.ref_model_name_or_path, "ref_model_name_or_path", required=False)
        if not self.train_data:
            problems.append("train_data: required (preference records in the toolkit schema)")
        elif not Path(self.train_data).exists():
            problems.append(f"train_data: {self.train_data!r} does not exist")
        if list(self.loss_type) != MPO_LOSS_TYPES:
            problems.append(f"loss_type: MPO needs {MPO_LOSS_TYPES}, got {self.loss_type}")
        if self.loss_weights is None or len(self.loss_weights) != 3:
            problems.append(f"loss_weights: three weights (DPO, BCO, SFT) needed, got {self.loss_weights}")
        elif any(w < 0 for w in self.loss_weights) or not any(w > 0 for w in self.loss_weights):
            problems.append(f"loss_weights: each must be >= 0 and one > 0, got {self.loss_weights}")
        if not self.beta > 0:
            problems.append(f"beta: must be > 0 (it scales the log-ratios; MPO uses 0.1), got {self.beta}")
        if self.label_smoothing != 0:
            problems.append(f"label_smoothing: the MPO loss has none, leave it at 0 (got {self.label_smoothing})")
        if not self.precompute_ref_log_probs:
            problems.append("precompute_ref_log_probs: must be true (MPOTrainer holds no reference model)")
        if self.on_bad_record not in ("raise", "skip"):
            problems.append(f"on_bad_record: 'raise' or 'skip', got {self.on_bad_record!r}")
        unsupported = {
            "ld_alpha": (self.ld_alpha, None),
            "f_divergence_type": (self.f_divergence_type, "reverse_kl"),
            "use_weighting": (self.use_weighting, False),
            "sync_ref_model": (self.sync_ref_model, False),
            "truncation_mode": (self.truncation_mode, "keep_start"),
        }
        for name, (value, default) in unsupported.items():
            if value != default:
                problems.append(f"{name}: not supported by MPOTrainer, leave it at {default!r} (got {value!r})")
        if self.use_lora and self.freeze_language_model:
            problems.append("freeze_language_model: LoRA already freezes the base weights; set one of the two")
        raise_problems("MPO config", problems)
