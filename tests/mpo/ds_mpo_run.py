"""`train_mpo` under the deepspeed launcher, recording what the distributed tests check.

deepspeed --num_gpus N tests/mpo/ds_mpo_run.py --model_name_or_path M --train_data D --output_dir O ...

Every rank writes `<output_dir>/probe/rank<r>.json`: each training log (logging_steps=1: each step) as that rank saw
it, the BCO delta included. With
`MPO_TEST_KILL_AFTER_SAVE=<step>` the process kills itself (SIGKILL, no cleanup) once that step's checkpoint is saved.
"""

import json
import os
import signal
from pathlib import Path

from transformers import TrainerCallback

from common.cli import parse_configs
from common.distributed import init_distributed_early
from mpo.config import MPOConfig
from mpo.train import train_mpo


class Probe(TrainerCallback):
    def __init__(self, out_dir: str):
        self.rank = int(os.environ.get("RANK", 0))
        self.path = Path(out_dir) / "probe" / f"rank{self.rank}.json"
        self.records = json.loads(self.path.read_text()) if self.path.exists() else []
        self.kill_after = int(os.environ.get("MPO_TEST_KILL_AFTER_SAVE", 0))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.records.append({"step": state.global_step, **logs})
            self.path.parent.mkdir(parents=True, exist_ok=True)  # output_dir first (common.run_folder)
            self.path.write_text(json.dumps(self.records))

    def on_save(self, args, state, control, **kwargs):
        if self.kill_after and state.global_step == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    init_distributed_early()
    (cfg,) = parse_configs([MPOConfig])
    train_mpo(cfg, callbacks=[Probe(cfg.output_dir)])


if __name__ == "__main__":
    main()
