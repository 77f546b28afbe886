"""`BuildPairsConfig`: everything the reward-ranked pair building job (`data_builders.build.build_pairs`) reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from common.config_checks import model_path_problems, output_dir_problems, raise_problems
from data_builders.pairing import RULES
from data_builders.sampling import SamplingParams
from data_builders.sources import FORMATS


@dataclass
class BuildPairsConfig:
    """Sample K responses per prompt from a policy, score them with a reward model, keep chosen/rejected pairs."""

    # Fields that do not change what the job writes: a rerun may change them and still resume (common.run_folder).
    NOT_AFFECTING_RESULTS: ClassVar[tuple[str, ...]] = (
        "output_dir", "overwrite_output_dir", "progress", "report_to", "wandb_project", "run_name", "device",
        "score_batch_size", "local_rank", "on_bad_record",
        "reward_url",  # the served model counts instead (`data_builders.scoring.ServedRewardModel`)
    )  # fmt: skip

    # > inputs
    prompts: str = field(default=None, metadata={"help": "Prompt file or folder (.jsonl, .parquet or datasets dir)."})
    prompt_format: str = field(default="auto", metadata={"help": f"Prompt format, one of {FORMATS}."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder relative image paths resolve against (default: the file's folder)."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N valid prompts."})
    on_bad_record: str = field(
        default="skip",
        metadata={"help": "A bad prompt (no question, unreadable image, vision token in the text...): 'skip' counts "
                  "it in the report, 'raise' stops naming the record and the field."},
    )  # fmt: skip
    policy_name_or_path: str = field(default=None, metadata={"help": "Policy VLM folder that samples the responses."})
    reward_model_name_or_path: str = field(
        default=None, metadata={"help": "Reward model folder (ours or Skywork-VL-Reward format) that scores them."}
    )
    reward_url: list[str] = field(
        default_factory=list,
        metadata={"help": "Reward server URL(s) (recipes/serve_reward.py) to score with instead of loading the model."},
    )
    # > sampling
    backend: str = field(default="hf", metadata={"help": "Sampling backend: 'hf' (transformers) or 'vllm' (GPU)."})
    num_samples: int = field(default=8, metadata={"help": "Candidates K sampled per prompt."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0: off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest response in tokens."})
    seed: int = field(default=0, metadata={"help": "Base seed; each prompt samples with hash(seed, prompt id)."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype: float32, bfloat16 or float16 (GPU)."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto (cuda:LOCAL_RANK when available)."})
    min_pixels: int | None = field(default=None, metadata={"help": "Lower bound on image area (processor resize)."})
    max_pixels: int | None = field(default=None, metadata={"help": "Upper bound on image area (processor resize)."})
    max_prompt_tokens: int | None = field(
        default=None, metadata={"help": "Skip (and count) prompts longer than this many tokens, images included (hf)."}
    )
    score_batch_size: int = field(default=8, metadata={"help": "Responses per reward-model forward."})
    # > pair selection (docs/data_building.md)
    rule: str = field(default="best_vs_worst", metadata={"help": f"Pair selection rule, one of {RULES}."})
    min_gap: float = field(
        default=0.0, metadata={"help": "Smallest chosen-minus-rejected reward gap kept (best_vs_worst, all_pairs)."}
    )
    max_pairs_per_prompt: int = field(default=1, metadata={"help": "Cap on pairs per prompt (all_pairs, correctness)."})
    length_penalty: float = field(
        default=0.0, metadata={"help": "Length-normalised selection: rank by reward - length_penalty * tokens."}
    )
    # > output
    output_dir: str = field(default=None, metadata={"help": "Where chunks, the merged `pairs/` and the report go."})
    chunk_size: int = field(
        default=16, metadata={"help": "Prompts per chunk: the unit of atomic writes, resume and sharding."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete an output_dir holding a build of other settings or inputs and start over (instead "
                  "of refusing it)."},
    )  # fmt: skip
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with rate and ETA."})
    report_to: str = field(default="none", metadata={"help": "'none' or 'wandb' (the report's counts and histograms)."})
    wandb_project: str = field(default="vlrm-mpo", metadata={"help": "wandb project (with report_to=wandb)."})
    run_name: str | None = field(default=None, metadata={"help": "wandb run name (default: output_dir's name)."})
    local_rank: int = field(
        default=-1, metadata={"help": "Passed by the deepspeed launcher; unused (ranks come from the process group)."}
    )

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(num_samples=self.num_samples, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, max_new_tokens=self.max_new_tokens)  # fmt: skip

    def validate(self) -> None:
        """Check every field at once; raise one ValueError listing all problems and their fixes."""
        problems = [] if self.prompts else ["prompts is required (--prompts ...)"]
        problems += model_path_problems(self.policy_name_or_path, "policy_name_or_path")
        if self.reward_url and self.reward_model_name_or_path:
            problems.append("reward_model_name_or_path and reward_url: give one (the samples are scored by a local "
                            "reward model or by servers)")  # fmt: skip
        elif not self.reward_url:  # with reward_url a reward server scores: no local model is read
            problems += model_path_problems(self.reward_model_name_or_path, "reward_model_name_or_path")
        problems += output_dir_problems(self.output_dir)
        choices = {"prompt_format": FORMATS, "rule": RULES, "backend": ("hf", "vllm"), "on_bad_record": ("raise", "skip"),
                   "report_to": ("none", "wandb"), "dtype": ("float32", "bfloat16", "float16")}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r}: choose one of {allowed}")
        for name in ("chunk_size", "max_pairs_per_prompt", "score_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be >= 1")
        if self.min_gap < 0:
            problems.append(f"min_gap={self.min_gap}: must be >= 0")
        if self.length_penalty < 0:
            problems.append(f"length_penalty={self.length_penalty}: must be >= 0")
        try:
            self.sampling_params()
        except ValueError as e:
            problems.append(str(e))
        raise_problems("BuildPairsConfig", problems)
