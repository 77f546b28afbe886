"""Build a random-weight Qwen2.5-VL and its processor offline, saved with `save_pretrained`.

python recipes/make_tiny_model.py --output_dir outputs/tiny-vlm                 # ~0.2 M params, 512-token BPE
python recipes/make_tiny_model.py --output_dir outputs/small-vlm --preset small
python recipes/make_tiny_model.py --output_dir outputs/tiny-qwen2 --vocab qwen2  # real Qwen2 token ids
"""

import dataclasses
from dataclasses import field

from common.cli import run_recipe
from common.tiny_vlm import TinyVLMSpec, save_tiny_vlm


@dataclasses.dataclass
class MakeTinyModelConfig:
    output_dir: str = field(metadata={"help": "Where to save the model and processor."})
    preset: str = field(default="tiny", metadata={"help": "Shape: tiny, small or 7b (the real 7B architecture)."})
    vocab: str | None = field(default=None, metadata={"help": "Override the vocabulary: tiny (512 BPE) or qwen2."})
    hidden_size: int | None = field(
        default=None, metadata={"help": "Override the LM width (the MLP becomes 2x; the mrope split follows)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})


def main(cfg: MakeTinyModelConfig) -> None:
    overrides = {"seed": cfg.seed}
    if cfg.vocab:
        overrides["vocab"] = cfg.vocab
    if cfg.hidden_size:
        overrides.update(hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size)
    path = save_tiny_vlm(cfg.output_dir, TinyVLMSpec.preset(cfg.preset, **overrides))
    print(path)


if __name__ == "__main__":
    run_recipe(main, [MakeTinyModelConfig])
