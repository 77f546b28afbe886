"""Counting the work: forward FLOPs and memory of a Qwen2.5-VL shape, and the ideal ratio of each benchmark.

The ideal of a benchmark is the ratio its baseline and our path would have if time were proportional to the
floating-point work each must do (matmuls and attention; norms, rotary and softmax are ignored). A measured ratio
below its ideal is overhead (launches, padding, memory traffic); above it, the baseline also wastes work that is not
counted here (e.g. logits on every position).

    >>> shape = Shape.from_spec(TinyVLMSpec.preset("7b"))
    >>> scoring_ideal(shape, k=8, image_tokens=1296, prompt_tokens=1340, response_tokens=50)
"""

from __future__ import annotations

import dataclasses

from common.tiny_vlm import TinyVLMSpec

PATCHES_PER_TOKEN = 4  # 2x2 patches of 14 px are merged into one LM token
WINDOW_PATCHES = 64  # window attention over 112 px = 8x8 patches in the non-full vision blocks


@dataclasses.dataclass(frozen=True)
class Shape:
    """The dimensions that set the work: LM, vision tower and vocabulary."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    v_hidden: int
    v_ffn: int
    v_layers: int
    v_full_layers: int

    @classmethod
    def from_spec(cls, spec: TinyVLMSpec) -> Shape:
        vocab = 152064 if spec.vocab == "qwen2" else 576  # the tiny BPE: 512 + 22 added, rounded up to 64
        return cls(spec.hidden_size, spec.intermediate_size, spec.num_hidden_layers, spec.num_attention_heads,
                   spec.num_key_value_heads, vocab, spec.vision_hidden_size, spec.vision_intermediate_size,
                   spec.vision_depth, len(spec.vision_fullatt_block_indexes))  # fmt: skip

    # parameters
    @property
    def lm_layer_params(self) -> int:
        kv = self.hidden // self.heads * self.kv_heads
        return self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.ffn

    @property
    def vision_params(self) -> int:
        """ViT blocks, patch embedding and the merger (projector into the LM width), biases and norms included."""
        block = 4 * self.v_hidden**2 + 3 * self.v_hidden * self.v_ffn + 7 * self.v_hidden + 2 * self.v_ffn
        merger = (4 * self.v_hidden) ** 2 + 4 * self.v_hidden * self.hidden + 5 * self.v_hidden + self.hidden
        return self.v_layers * block + 3 * 2 * 14 * 14 * self.v_hidden + merger

    @property
    def params(self) -> int:
        """All parameters: LM layers (with q/k/v biases and two norms each), final norm, embeddings, LM head, vision."""
        kv = self.hidden // self.heads * self.kv_heads
        lm = self.layers * (self.lm_layer_params + 3 * self.hidden + 2 * kv) + self.hidden
        return lm + 2 * self.vocab * self.hidden + self.vision_params

    # forward FLOPs
    def lm(self, new: int, past: int = 0) -> float:
        """`new` tokens through the decoder layers, each attending to `past` earlier tokens and the new ones before it."""
        attention_pairs = new * past + new * (new + 1) / 2
        return self.layers * (2 * self.lm_layer_params * new + 4 * self.hidden * attention_pairs)

    def head(self, tokens: int) -> float:
        """LM head (logits) on `tokens` positions."""
        return 2 * self.hidden * self.vocab * tokens

    def vision(self, image_tokens: int) -> float:
        """The vision tower and merger on one image of `image_tokens` LM tokens."""
        if image_tokens == 0:
            return 0.0
        patches = PATCHES_PER_TOKEN * image_tokens
        block = 2 * (4 * self.v_hidden**2 + 3 * self.v_hidden * self.v_ffn) * patches
        window = min(WINDOW_PATCHES, patches)
        attention = (
            4 * self.v_hidden * patches * (self.v_full_layers * patches + (self.v_layers - self.v_full_layers) * window)
        )
        merger = 2 * ((4 * self.v_hidden) ** 2 + 4 * self.v_hidden * self.hidden) * image_tokens
        return self.v_layers * block + attention + merger + 2 * 3 * 2 * 14 * 14 * self.v_hidden * patches


def scoring_ideal(shape: Shape, k: int, image_tokens: int, prompt_tokens: int, response_tokens: int) -> dict:
    """Naive: K full forwards (image, prompt, response). Group-aware: image and prompt once, K responses on top."""
    naive = k * (shape.vision(image_tokens) + shape.lm(prompt_tokens + response_tokens))
    ours = shape.vision(image_tokens) + shape.lm(prompt_tokens) + k * shape.lm(response_tokens, prompt_tokens)
    return {"baseline_flops": naive, "ours_flops": ours, "ideal_speedup": naive / ours}


def sampling_ideal(shape: Shape, k: int, image_tokens: int, prompt_tokens: int, new_tokens: int) -> dict:
    """Prefill K times (`num_return_sequences`) vs once; the K x new-token decode is the same work on both sides."""
    prefill = shape.vision(image_tokens) + shape.lm(prompt_tokens) + shape.head(1)
    decode = k * (shape.lm(new_tokens, prompt_tokens) + shape.head(new_tokens))
    return {"baseline_flops": k * prefill + decode, "ours_flops": prefill + decode,
            "ideal_speedup": (k * prefill + decode) / (prefill + decode), "prefill_share": k * prefill / (k * prefill + decode)}  # fmt: skip


def mpo_step_flops(shape: Shape, image_tokens: int, prompt_tokens: int, response_tokens: float, checkpointing: bool,
                   vision_trained: bool = True, lm_weights_trained: bool = True) -> dict:  # fmt: skip
    """Work per pair of one training step: `trl_flops` / `ours_flops` as executed, `*_model_flops` for MFU.

    TRL: two rows (image + prompt + response each) through the policy, and two through the reference model.
    Ours: one packed row (image and prompt once, both responses on top); the reference log-probs are precomputed once
    per dataset, outside the step (`ours_ref_pass_flops`). Backward is 2 x forward where weights train, 1 x where only
    input gradients flow (LoRA's frozen base), none in a frozen vision tower; checkpointing adds one forward of what
    backpropagates (not counted in the model FLOPs of MFU, by convention). Logits: response tokens only, both sides.
    """
    r = round(response_tokens)
    vision = shape.vision(image_tokens)
    row = shape.lm(prompt_tokens + r) + shape.head(r)
    packed = shape.lm(prompt_tokens) + 2 * shape.lm(r, prompt_tokens) + 2 * shape.head(r)
    lm_model = 3 if lm_weights_trained else 2
    v_model = 3 if vision_trained else 1
    lm_exec = lm_model + checkpointing
    v_exec = v_model + (checkpointing and vision_trained)
    trl = 2 * (v_exec * vision + lm_exec * row) + 2 * (vision + row)
    ours = v_exec * vision + lm_exec * packed
    return {"trl_flops": trl, "ours_flops": ours, "ours_ref_pass_flops": vision + packed, "ideal_speedup": trl / ours,
            "trl_model_flops": 2 * (v_model * vision + lm_model * row) + 2 * (vision + row),
            "ours_model_flops": v_model * vision + lm_model * packed}  # fmt: skip


def activation_bytes(shape: Shape, rows: int, tokens: int, image_tokens: int, bytes_per: int, checkpointing: bool,
                     vision_trained: bool = True) -> float:  # fmt: skip
    """Activations kept for backward by `rows` sequences of `tokens` LM tokens (attention by SDPA, no score matrix).

    Without checkpointing, per LM layer and token: the inputs of the two norms, q/k/v, the attention output, the MLP
    input, gate, up, act(gate)*up (~ 6 d + 4 ffn values). With checkpointing: one d-vector per layer and token plus
    one layer's full set during recomputation. The vision tower likewise per patch (nothing when frozen); logits are
    not counted (a fused head keeps only log-probs of the response tokens).
    """
    per_token_layer = 6 * shape.hidden + 4 * shape.ffn
    per_patch_layer = 6 * shape.v_hidden + 4 * shape.v_ffn
    patches = PATCHES_PER_TOKEN * image_tokens if vision_trained else 0
    if checkpointing:
        lm = rows * tokens * (shape.layers * shape.hidden + per_token_layer)
        vision = rows * patches * (shape.v_layers * shape.v_hidden + per_patch_layer)
    else:
        lm = rows * tokens * shape.layers * per_token_layer
        vision = rows * patches * shape.v_layers * per_patch_layer
    return float((lm + vision) * bytes_per)


def mpo_memory_ideal(shape: Shape, pairs: int, image_tokens: int, prompt_tokens: int, response_tokens: float,
                     bytes_per: int, checkpointing: bool, trainable: int | None = None,
                     vision_trained: bool = True, reference_copy: bool = True) -> dict:  # fmt: skip
    """Peak memory, ours / TRL: model states (weights; gradients and two AdamW moments of the `trainable` parameters,
    same dtype as the weights; TRL also holds the reference weights unless `reference_copy` is off, as with LoRA,
    where its reference is the policy without adapters) plus activations (TRL: 2 rows per pair; ours: 1 packed row)."""
    r = round(response_tokens)
    trainable = shape.params if trainable is None else trainable
    states = bytes_per * (shape.params + 3 * trainable)
    trl = states + reference_copy * bytes_per * shape.params + activation_bytes(shape, 2 * pairs, prompt_tokens + r, image_tokens,
                                                                bytes_per, checkpointing, vision_trained)  # fmt: skip
    ours = states + activation_bytes(shape, pairs, prompt_tokens + 2 * r, image_tokens, bytes_per, checkpointing,
                                     vision_trained)  # fmt: skip
    return {"trl_bytes": trl, "ours_bytes": ours, "ideal_memory_ratio": ours / trl}
