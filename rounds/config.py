"""`RoundsConfig`: everything the iterative MPO loop (`rounds.loop.run_rounds`) reads."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import ClassVar

from common.config_checks import model_path_problems, output_dir_problems, raise_problems
from policy_eval.rounds_hook import config_problems

PROMPT_SCHEDULES = ("fresh", "same")
REFERENCES = ("round_start", "initial")
SELECTIONS = ("reward", "hybrid")
ON_UNHEALTHY = ("continue", "rollback", "stop")


def split_flag_words(args: list[str]) -> list[str]:
    """`['--max_steps 40 --learning_rate 1e-4']` (one command-line word: argparse takes a word that starts with `-`
    and holds a space as a value) as `['--max_steps', '40', '--learning_rate', '1e-4']`; YAML lists pass unchanged."""
    return [w for a in args for w in (shlex.split(a) if a.startswith("-") and any(c.isspace() for c in a) else [a])]


@dataclass
class RoundsConfig:
    """N rounds of: sample K responses per prompt from the current policy, score them with the reward model, build
    pairs, run MPO from the current policy, evaluate on held-out prompts, check the guards."""

    # Fields a rerun may change and still resume (`common.run_folder`); every other field, and the inputs' content,
    # is the run's identity.
    NOT_AFFECTING_RESULTS: ClassVar[tuple[str, ...]] = (
        "output_dir", "overwrite_output_dir", "launcher", "report_to", "wandb_project", "run_name", "device",
        "eval_batch_size", "reward_url",  # reward_url: the served model counts instead (ServedRewardModel)
    )  # fmt: skip

    # > inputs
    policy_name_or_path: str = field(default=None, metadata={"help": "The initial policy (round 1 starts from it)."})
    reward_model_name_or_path: str = field(default=None, metadata={"help": "Reward model that ranks the samples."})
    reward_url: list[str] = field(
        default_factory=list,
        metadata={"help": "Reward server URL(s) (recipes/serve_reward.py) that score instead of a local reward model."},
    )
    prompts: str = field(default=None, metadata={"help": "Prompt pool (records with `answer` where ground truth)."})
    eval_prompts: str = field(default=None, metadata={"help": "Held-out prompts evaluated after every round."})
    eval_pairs: str | None = field(default=None, metadata={"help": "Held-out pairs for MPO's pair-accuracy hook."})
    heldout_reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A second reward model, never trained on: the hacking alarm watches it too."}
    )
    build_pairs_config: str = field(default=None, metadata={"help": "YAML of recipes/build_pairs.py (sampling)."})
    mpo_config: str = field(default=None, metadata={"help": "YAML of recipes/mpo_qwen.py (the MPO stage)."})
    build_pairs_args: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra build_pairs flags: YAML [--temperature, '0.5'] or --build_pairs_args '--temperature 0.5'."
        },
    )
    mpo_args: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra MPO flags: YAML [--max_steps, '40'] or --mpo_args '--max_steps 40 --beta 0.2'."},
    )
    # > the loop
    num_rounds: int = field(default=3, metadata={"help": "Rounds of sample -> score -> pair -> MPO."})
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "Prompts sampled per round (default: the whole pool)."}
    )
    prompt_schedule: str = field(
        default="fresh", metadata={"help": "'fresh': the next slice of the pool each round; 'same': the same prompts."}
    )
    reference: str = field(
        default="round_start",
        metadata={"help": "MPO reference per round: 'round_start' (the round's starting policy) or 'initial'."},
    )
    seed: int = field(default=0, metadata={"help": "Base seed; round r samples with seed + r."})
    # > guards (docs/rounds.md)
    selection: str = field(
        default="hybrid",
        metadata={"help": "'hybrid': correct chosen + wrong rejected where ground truth exists (reward breaks ties); "
                  "'reward': the reward model alone (build_pairs' configured rule)."},
    )  # fmt: skip
    length_penalty: float = field(
        default=0.0, metadata={"help": "Length-normalised selection: rank by reward - length_penalty * tokens."}
    )
    hacking_tolerance: float = field(
        default=0.05,
        metadata={"help": "Alarm when held-out reward rises while correctness (or the held-out reward model's mean) "
                  "falls by more than this from the previous round; the loop stops and keeps the best round."},
    )  # fmt: skip
    stop_on_hacking: bool = field(default=True, metadata={"help": "Stop the loop when the hacking alarm fires."})
    health_min_first_loss: float = field(
        default=1e-3, metadata={"help": "Warn when MPO's first logged loss is below this (nothing to learn)."}
    )
    health_max_degenerate: float = field(
        default=0.2, metadata={"help": "Warn when the held-out degenerate-output rate exceeds this."}
    )
    on_unhealthy: str = field(
        default="rollback",
        metadata={"help": "A round with a health warning: 'rollback' (the next round starts from the best healthy "
                  "round so far; the kept policy is a healthy one), 'stop' (end the loop there), 'continue' (warn)."},
    )  # fmt: skip
    # > evaluation
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Greedy answer length on held-out prompts."})
    eval_batch_size: int = field(default=8, metadata={"help": "Held-out prompts per generate / score batch."})
    degenerate_ngram: int = field(
        default=3, metadata={"help": "A response repeating a word n-gram of this size counts as degenerate."}
    )
    device: str = field(default="auto", metadata={"help": "Device of the evaluation: cpu, cuda or auto."})
    eval_benchmarks: list[str] = field(
        default_factory=list,
        metadata={"help": "Policy benchmarks after every round, NAME=PATH (recipes/eval_policy.py's --data), e.g. "
                  "['mathvista_testmini=data/MathVista']; greedy answers of eval_max_new_tokens tokens."},
    )  # fmt: skip
    eval_command: str | None = field(
        default=None,
        metadata={"help": "External evaluator run after every round: a command template with {policy} and "
                  "{output_dir} whose JSON results go into the round report (e.g. an lmms-eval command line)."},
    )  # fmt: skip
    # > running
    output_dir: str = field(default=None, metadata={"help": "The run folder (resumed when rerun)."})
    launcher: str = field(
        default="",
        metadata={"help": "Prefix of the stage commands, e.g. 'deepspeed --num_gpus 8' (empty: one process)."},
    )
    num_threads: int = field(
        default=1, metadata={"help": "CPU threads per process (fixed so the result does not depend on the load)."}
    )
    report_to: str = field(default="none", metadata={"help": "'none' or 'wandb' (one group for the whole run)."})
    wandb_project: str = field(default="vlrm-mpo", metadata={"help": "wandb project (with report_to=wandb)."})
    run_name: str | None = field(default=None, metadata={"help": "wandb group name (default: output_dir's name)."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete an output_dir holding another run (or anything else) and start over."}
    )

    def __post_init__(self):
        self.build_pairs_args = split_flag_words(self.build_pairs_args)
        self.mpo_args = split_flag_words(self.mpo_args)

    def validate(self) -> None:
        """Check every field at once; raise one ValueError listing all problems."""
        problems = [f"{name} is required (--{name} ...)" for name in ("prompts", "eval_prompts", "build_pairs_config",
                                                                     "mpo_config") if not getattr(self, name)]  # fmt: skip
        problems += model_path_problems(self.policy_name_or_path, "policy_name_or_path")
        if not self.reward_model_name_or_path and not self.reward_url:
            problems.append("reward_model_name_or_path or reward_url is required (the reward model that ranks samples)")
        elif self.reward_url and self.reward_model_name_or_path:
            problems.append("reward_model_name_or_path and reward_url: give one (the samples are scored by a local "
                            "reward model or by servers)")  # fmt: skip
        elif not self.reward_url:
            problems += model_path_problems(self.reward_model_name_or_path, "reward_model_name_or_path")
        problems += model_path_problems(self.heldout_reward_model_name_or_path, "heldout_reward_model_name_or_path",
                                        required=False)  # fmt: skip
        problems += output_dir_problems(self.output_dir)
        choices = {"prompt_schedule": PROMPT_SCHEDULES, "reference": REFERENCES, "selection": SELECTIONS,
                   "on_unhealthy": ON_UNHEALTHY, "report_to": ("none", "wandb")}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r}: choose one of {allowed}")
        for name in ("num_rounds", "eval_max_new_tokens", "eval_batch_size", "degenerate_ngram", "num_threads"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be >= 1")
        if self.prompts_per_round is not None and self.prompts_per_round < 1:
            problems.append(f"prompts_per_round={self.prompts_per_round}: must be >= 1 (or unset: the whole pool)")
        for name in ("length_penalty", "hacking_tolerance", "health_min_first_loss"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)}: must be >= 0")
        if not 0 <= self.health_max_degenerate <= 1:
            problems.append(f"health_max_degenerate={self.health_max_degenerate}: must be in [0, 1]")
        owned = {"--prompts", "--policy_name_or_path", "--reward_model_name_or_path", "--output_dir", "--seed",
                 "--model_name_or_path", "--train_data", "--ref_model_name_or_path", "--resume_from_checkpoint",
                 "--rule", "--length_penalty", "--eval_prompts", "--eval_pairs", "--reward_url"}  # fmt: skip
        for name in ("build_pairs_args", "mpo_args"):
            for flag in set(getattr(self, name)) & owned:
                problems.append(f"{name}: {flag} is set by the loop per round; use the rounds config instead")
        problems += config_problems(self.eval_benchmarks, self.eval_command)
        raise_problems("RoundsConfig", problems)
