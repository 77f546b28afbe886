"""Write the toy task (coloured shapes): preference pairs and prompts with ground truth, train and held-out.

python recipes/make_toy_data.py --output_dir outputs/toy --n_train 512 --n_eval 128
python recipes/make_toy_data.py --output_dir outputs/toy_jsonl --fmt jsonl --kinds color shape
"""

import dataclasses
from dataclasses import field

from common.cli import run_recipe, write_run_meta
from common.toy_task import KINDS, ToyTaskConfig, write_toy_task


@dataclasses.dataclass
class MakeToyDataConfig:
    output_dir: str = field(metadata={"help": "Where to write pairs_{train,eval} and prompts_{train,eval}."})
    n_train: int = field(default=512, metadata={"help": "Training examples per question kind."})
    n_eval: int = field(default=128, metadata={"help": "Held-out examples per question kind."})
    kinds: list[str] = field(default_factory=lambda: list(KINDS), metadata={"help": f"Question kinds, of {KINDS}."})
    image_size: int = field(default=112, metadata={"help": "Image side in pixels."})
    seed: int = field(default=0, metadata={"help": "Seed; each example is drawn from (seed, split, index, kind)."})
    fmt: str = field(default="folder", metadata={"help": "folder (datasets save_to_disk), parquet or jsonl."})


def main(cfg: MakeToyDataConfig) -> None:
    task = ToyTaskConfig(cfg.n_train, cfg.n_eval, tuple(cfg.kinds), cfg.image_size, cfg.seed, cfg.fmt)
    paths = write_toy_task(cfg.output_dir, task)
    write_run_meta(cfg.output_dir, [cfg], splits={k: str(v) for k, v in paths.items()})
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    run_recipe(main, [MakeToyDataConfig])
