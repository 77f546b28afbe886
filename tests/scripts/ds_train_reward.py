"""`recipes/train_reward.py` plus two test hooks, for the launcher tests. Same flags as the recipe.

    deepspeed --num_gpus 2 tests/scripts/ds_train_reward.py --config ... [flags]

Environment:
    LOSS_FILE=path   each rank appends `{"rank", "step", "loss"}` lines with the exact loss of every training step.
    KILL_AT_STEP=n   every rank dies (exit 3) right after optimizer step n, before anything else is written.
"""

import json
import os

from transformers import TrainerCallback

from common.cli import parse_configs
from common.distributed import init_distributed_early, shutdown
from reward.config import RewardConfig
from reward.train import VLRewardTrainer, train_reward_model


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os._exit(3)


def record_losses(path: str) -> None:
    compute_loss = VLRewardTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training:
            with open(path, "a") as f:
                f.write(json.dumps({"rank": self.args.process_index, "step": self.state.global_step,
                                    "loss": loss.item()}) + "\n")  # fmt: skip
        return loss

    VLRewardTrainer.compute_loss = recording


def main() -> None:
    init_distributed_early()
    (cfg,) = parse_configs([RewardConfig])
    if os.environ.get("LOSS_FILE"):
        record_losses(os.environ["LOSS_FILE"])
    callbacks = [KillAt(int(os.environ["KILL_AT_STEP"]))] if os.environ.get("KILL_AT_STEP") else []
    train_reward_model(cfg, callbacks=callbacks)
    shutdown()


if __name__ == "__main__":
    main()
