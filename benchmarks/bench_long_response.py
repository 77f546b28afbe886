"""Memory of one packed MPO pair with a very long chosen response: cut to `max_length` against kept whole.

    python benchmarks/bench_long_response.py --words 2000 --max_length 1024

Each side runs in its own process (peak RSS of collate + `pack_pairs`, over the process's size after loading). The
whole side is what `PairCollator` did before it cut the ids (it only masked them): with `--words 20000` (80,000
tokens with the tiny tokenizer) its attention mask alone is 25.6 GB, so only its tensor sizes are reported
(`--whole_pack false`, the default above 4,000 words).
"""

import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from dataclasses import field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.cli import parse_configs  # noqa: E402


@dataclasses.dataclass
class BenchConfig:
    words: int = field(default=2000, metadata={"help": "Words in the long chosen response (' word' repeated)."})
    max_length: int = field(default=1024, metadata={"help": "MPO max_length of the cut side."})
    whole_pack: bool | None = field(default=None, metadata={"help": "Also pack the whole side (default: <= 4000)."})
    side: str | None = field(default=None, metadata={"help": "Internal: 'cut' or 'whole' (one process each)."})
    model: str | None = field(default=None, metadata={"help": "Internal: the tiny model folder."})


def measure(cfg: BenchConfig) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    from common.processor import load_processor
    from common.toy_task import make_example, preference_record
    from mpo.packing import PairCollator, pack_pairs

    processor = load_processor(cfg.model)
    model = AutoModelForImageTextToText.from_pretrained(cfg.model)
    pair = preference_record(make_example(0, "train", 0, "color"))
    pair["chosen"] = [{"role": "assistant", "content": [{"type": "text", "text": "It is red." + " word" * cfg.words}]}]
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = PairCollator(processor, cfg.max_length if cfg.side == "cut" else None)([pair])
    result = {"side": cfg.side, "chosen_input_ids": list(batch["chosen_input_ids"].shape)}
    length = sum(batch[k].size(1) for k in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")) + 1
    result["packed_tokens"], result["attention_mask_bytes"] = length, length * length * 4
    if cfg.side == "cut" or cfg.whole_pack:
        packed = pack_pairs(batch, model.model.get_rope_index, torch.float32)
        assert packed.model_inputs["attention_mask"].shape[-1] == length
        result["peak_rss_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
    return result


def main(cfg: BenchConfig) -> None:
    if cfg.side:
        print(json.dumps(measure(cfg)))
        return
    from common.tiny_vlm import TinyVLMSpec, save_tiny_vlm

    whole_pack = cfg.whole_pack if cfg.whole_pack is not None else cfg.words <= 4000
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_vlm(Path(tmp) / "tiny", TinyVLMSpec.preset("tiny"))
        rows = []
        for side in ("whole", "cut"):
            args = ["--words", cfg.words, "--max_length", cfg.max_length, "--whole_pack", whole_pack, "--side", side,
                    "--model", model]  # fmt: skip
            cmd = [sys.executable, __file__, *map(str, args)]
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    for row in rows:
        print(json.dumps(row))
    whole, cut = rows
    print(f"attention mask, cut / whole: {cut['attention_mask_bytes'] / whole['attention_mask_bytes']:.2e}")
    if "peak_rss_mib" in whole:
        print(f"peak RSS of collate + pack, cut / whole: {cut['peak_rss_mib'] / whole['peak_rss_mib']:.3f}")


if __name__ == "__main__":
    main(*parse_configs([BenchConfig]))
