"""Prompt records -> verl's RL Parquet, laid out as verl's examples/data_preprocess/geo3k.py writes it, with the
prompt and images the VL reward model needs in `extra_info` (docs/serving.md, "verl").

    python recipes/prepare_verl_data.py --prompts outputs/toy/prompts_train --output outputs/verl/train.parquet \
        --split train --data_source toy
    python recipes/prepare_verl_data.py --prompts outputs/toy/prompts_eval --output outputs/verl/test.parquet \
        --split test --data_source toy
"""

import json

from common.cli import run_recipe
from reward.integrations.verl_data import VerlDataConfig, prepare_verl_data


def main(cfg: VerlDataConfig) -> None:
    n, skipped = prepare_verl_data(cfg)
    print(json.dumps({"output": cfg.output, "rows": n, "skipped": skipped.to_dict()}, indent=2))


if __name__ == "__main__":
    run_recipe(main, [VerlDataConfig])
