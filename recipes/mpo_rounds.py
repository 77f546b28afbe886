"""Iterative reward-guided MPO: N rounds of sample -> score -> pair -> MPO -> held-out evaluation, with guards
against reward hacking (docs/rounds.md). Rerun the same command after a kill: it resumes at the stage it was in.

    # CPU, the toy task (what `make demo` runs after training the reward model and the warm start)
    python recipes/mpo_rounds.py --config recipes/configs/mpo_rounds_tiny.yaml \
        --policy_name_or_path outputs/demo/mpo-round0 --reward_model_name_or_path outputs/demo/reward/with_text/model \
        --prompts outputs/demo/toy/prompts_train --eval_prompts outputs/demo/toy/prompts_eval \
        --output_dir outputs/rounds-tiny
    # 8 GPUs: each stage runs under `deepspeed --num_gpus 8` (the config's `launcher`)
    python recipes/mpo_rounds.py --config recipes/configs/mpo_rounds_qwen2_5_vl_7b.yaml
"""

from common.cli import run_recipe
from rounds.config import RoundsConfig
from rounds.loop import run_rounds


def main(cfg: RoundsConfig) -> None:
    cfg.validate()
    result = run_rounds(cfg)
    print(f"kept round {result['best_round']}: {result['policy']}")


if __name__ == "__main__":
    run_recipe(main, [RoundsConfig])
