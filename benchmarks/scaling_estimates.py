"""Memory per GPU of the 7B reward model and MPO policy under ZeRO-2 / ZeRO-3, from DeepSpeed's own estimators.

    python benchmarks/scaling_estimates.py                       # 8 GPUs on 1 node: the tables of docs/scaling.md
    python benchmarks/scaling_estimates.py --gpus_per_node 8 --nodes 2 --response_tokens 512

The models are built on the meta device at the real Qwen2.5-VL-7B shape (`TinyVLMSpec.preset("7b")`, no weights);
`estimate_zero{2,3}_model_states_mem_needs` (what DeepSpeed's `..._all_live(model)` helpers print) give the model
states per GPU and per node from the total and the largest layer's parameter count (`count_params`: DeepSpeed's
`model_to_params` de-duplicates by `data_ptr`, which is 0 for every meta tensor). Activations per GPU for one pair per
micro-batch come from `benchmarks.ideal.activation_bytes` (bf16, SDPA attention, vision tower frozen as in both 7B
recipes), with and without gradient checkpointing.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: E402
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

from benchmarks.ideal import Shape, activation_bytes  # noqa: E402
from common.tiny_vlm import TinyVLMSpec, build_config, build_processor  # noqa: E402
from reward.model import VLRewardModel  # noqa: E402

GIB = 2**30


def count_params(model) -> tuple[int, int]:
    """Total parameters (shared ones once, by identity) and the largest single module's own parameters."""
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def model_states(model, gpus_per_node: int, nodes: int) -> list[tuple[str, float, float]]:
    """(setting, GiB per GPU, GiB of CPU memory per node) for ZeRO-2/3 with and without CPU offload."""
    total, largest = count_params(model)
    kw = dict(num_gpus_per_node=gpus_per_node, num_nodes=nodes)
    rows = []
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, cpu_offload=offload, **kw)
        rows.append((f"ZeRO-2{', optimizer offload' if offload else ''}", gpu / GIB, cpu / GIB))
    for offload, params in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, cpu_offload=offload,
                                                           cpu_offload_params=params, **kw)  # fmt: skip
        name = "ZeRO-3" + (", optimizer + param offload" if params else ", optimizer offload" if offload else "")
        rows.append((name, gpu / GIB, cpu / GIB))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--image_tokens", type=int, default=1296, help="LM tokens of the image (1008 px: 1296).")
    p.add_argument("--prompt_text_tokens", type=int, default=60, help="Text tokens of the prompt.")
    p.add_argument("--response_tokens", type=int, default=300, help="Tokens of each response.")
    a = p.parse_args()

    spec = TinyVLMSpec.preset("7b")
    config = build_config(spec, build_processor(spec).tokenizer)
    with torch.device("meta"):
        models = {"reward model": VLRewardModel(config), "MPO policy": Qwen2_5_VLForConditionalGeneration(config)}
    shape = Shape.from_spec(spec)
    prompt = a.image_tokens + a.prompt_text_tokens
    # reward: chosen and rejected are two rows (prompt + response); MPO: one packed row (prompt + both responses)
    rows_tokens = {"reward model": (2, prompt + a.response_tokens), "MPO policy": (1, prompt + 2 * a.response_tokens)}
    print(f"{a.nodes} node(s) x {a.gpus_per_node} GPUs; activations: 1 pair per GPU micro-batch, {a.image_tokens} "
          f"image + {a.prompt_text_tokens} text prompt tokens, 2 x {a.response_tokens} response tokens, bf16\n")  # fmt: skip
    print(
        "| model | params | ZeRO setting | model states / GPU | CPU / node | + activations, no ckpt | + activations, ckpt |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, model in models.items():
        total, _ = count_params(model)
        rows, tokens = rows_tokens[name]
        act = {c: activation_bytes(shape, rows, tokens, a.image_tokens, 2, c, vision_trained=False) / GIB
               for c in (False, True)}  # fmt: skip
        for setting, gpu, cpu in model_states(model, a.gpus_per_node, a.nodes):
            print(f"| {name} | {total / 1e9:.2f} B | {setting} | {gpu:.1f} GiB | {cpu:.0f} GiB | "
                  f"{gpu + act[False]:.1f} GiB | {gpu + act[True]:.1f} GiB |")  # fmt: skip
        print(f"| {name} | | activations alone | | | {act[False]:.1f} GiB | {act[True]:.1f} GiB |")


if __name__ == "__main__":
    main()
