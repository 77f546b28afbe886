"""Sampling K candidate responses per prompt from a policy VLM, behind one small interface.

Backends (`make_sampler`):

* ``"hf"`` (`HFSampler`): transformers on CPU or GPU. With `shared_prefill=True` (default) the prompt and its
  images go through the vision tower and the LM **once** (batch 1); the KV cache is then repeated K ways and the
  K samples decode together. `generate(num_return_sequences=K)` instead copies the inputs K times before the
  prefill, so it runs the vision tower and the prompt K times (`shared_prefill=False` keeps that path as the
  baseline). Both draw the same random numbers in the same order (one `multinomial` over the K rows per step, the
  same logits warpers as `generate`), so for a seed they give the same samples up to float noise.
* ``"vllm"`` (`VLLMSampler`): GPU only, optional extra (`pip install vllm`), imported only when chosen.

Both also give greedy answers (`greedy(prompts, max_new_tokens)`, what policy evaluation reads): on the HF path,
the same shared-prefill loop with one row and argmax in place of the draw (`generate(do_sample=False)`'s tokens),
prompt by prompt; with vLLM, all the prompts in one batched call.

Only `SamplingParams` decide the distribution: a checkpoint's `generation_config.json` sampling defaults (the
Qwen2.5-VL-Instruct release ships `top_k=1`, `repetition_penalty=1.05`) are not applied on either path.

Determinism: each prompt is sampled with its own seed, `prompt_seed(seed, prompt_id)`, so a prompt's candidates do
not depend on which rank, chunk or rerun samples it. Qwen2.5-VL positions: image tokens get 3D (mrope) positions
from `get_rope_index` (it needs the processor's `mm_token_type_ids`); decoding continues at
`prompt_length + step + rope_delta` on all three axes, as `generate` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import (
    AutoModelForImageTextToText,
    DynamicCache,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from common.distributed import resolve_device
from common.errors import ConfigError
from common.images import load_image
from common.processor import load_processor
from common.rope import prompt_rope_positions


@dataclass
class SamplingParams:
    """How candidates are drawn (the `generate` meanings)."""

    num_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 128

    def __post_init__(self):
        problems = []
        if self.num_samples < 2:
            problems.append(f"num_samples={self.num_samples}: need at least 2 candidates to make a pair")
        if not self.temperature > 0:
            problems.append(f"temperature={self.temperature}: must be > 0 (sampling, not greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0 or self.max_new_tokens < 1:
            problems.append(f"top_k={self.top_k} must be >= 0 and max_new_tokens={self.max_new_tokens} >= 1")
        if problems:
            raise ConfigError("invalid sampling parameters: " + "; ".join(problems))


@dataclass
class Candidates:
    """K sampled responses for one prompt and their lengths in tokens (end-of-turn token included)."""

    texts: list[str]
    num_tokens: list[int]


class PromptTooLong(ValueError):
    """The prompt (images included) has more tokens than the sampler accepts; the build job counts it as a skip."""


class Sampler(Protocol):
    """What the build job needs from a sampling backend."""

    def sample(self, prompt: Mapping[str, Any], params: SamplingParams, seed: int) -> Candidates: ...


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A 63-bit seed for one prompt, independent of order, sharding and reruns."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{prompt_id}".encode()).digest()[:8], "little") >> 1


class HFSampler:
    """Sampling with transformers (see the module docstring).

    Args:
        model_path: local folder of the policy (a Qwen2.5-VL checkpoint).
        dtype: `"float32"`, `"bfloat16"` or `"float16"`.
        device: `"auto"`, `"cpu"`, `"cuda"`...
        min_pixels / max_pixels: image area bounds for the processor.
        shared_prefill: one prefill shared by the K samples (True) or `generate(num_return_sequences=K)` (False).
        max_prompt_tokens: longest accepted prompt in tokens, images included (None: no bound); longer ones raise
            `PromptTooLong` before any forward.
    """

    def __init__(self, model_path: str, dtype: str = "float32", device: str = "auto", min_pixels: int | None = None,
                 max_pixels: int | None = None, shared_prefill: bool = True,
                 max_prompt_tokens: int | None = None):  # fmt: skip
        self.max_prompt_tokens = max_prompt_tokens
        self.device = resolve_device(device)
        self.processor = load_processor(model_path, min_pixels=min_pixels, max_pixels=max_pixels)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.shared_prefill = shared_prefill
        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id
        self.eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=self.device)
        self.pad_id = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else int(self.eos_ids[0])

    def encode(self, prompt: Mapping[str, Any]):
        """The processor's inputs for one prompt record (chat template with the generation prompt)."""
        text = self.processor.apply_chat_template(prompt["prompt"], add_generation_prompt=True, tokenize=False)
        images = [load_image(im) for im in prompt.get("images") or []]
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        return inputs.to(self.device)

    @torch.no_grad()
    def sample(self, prompt: Mapping[str, Any], params: SamplingParams, seed: int) -> Candidates:
        inputs = self.encode(prompt)
        prompt_len = self._check_length(prompt, inputs)
        if self.shared_prefill:
            generator = torch.Generator(self.device).manual_seed(seed)
            warpers = self._warpers(params)

            def draw(seqs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
                probs = torch.softmax(warpers(seqs, logits), dim=-1)
                return torch.multinomial(probs, 1, generator=generator).squeeze(1)

            tokens = self._decode_shared_prefill(inputs, params.num_samples, params.max_new_tokens, draw)
        else:
            torch.manual_seed(seed)  # generate() draws from the global generator; same stream as the above
            out = self.model.generate(**inputs, do_sample=True, num_return_sequences=params.num_samples,
                                      max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                      top_p=params.top_p, top_k=params.top_k, repetition_penalty=1.0,
                                      pad_token_id=self.pad_id)  # fmt: skip
            tokens = out[:, prompt_len:]
        return self._decode(tokens)

    def _check_length(self, prompt: Mapping[str, Any], inputs) -> int:
        prompt_len = inputs["input_ids"].shape[1]
        if self.max_prompt_tokens is not None and prompt_len > self.max_prompt_tokens:
            raise PromptTooLong(
                f"prompt {prompt['id']!r}: {prompt_len} tokens > max_prompt_tokens={self.max_prompt_tokens}"
            )
        return prompt_len

    def _warpers(self, params: SamplingParams) -> LogitsProcessorList:
        # Same warpers, same order as `generate` builds them for these settings.
        warpers = LogitsProcessorList()
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            warpers.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=params.top_p))
        return warpers

    @torch.no_grad()
    def greedy(self, prompts: Sequence[Mapping[str, Any]], max_new_tokens: int) -> list[Candidates]:
        """The greedy answer to each prompt (argmax at every step, as `generate(do_sample=False)`): per prompt one
        prefill and one decode row."""
        argmax = lambda seqs, logits: logits.argmax(dim=-1)  # noqa: E731
        answers = []
        for prompt in prompts:
            inputs = self.encode(prompt)
            self._check_length(prompt, inputs)
            answers.append(self._decode(self._decode_shared_prefill(inputs, 1, max_new_tokens, argmax)))
        return answers

    def _decode_shared_prefill(self, inputs, k: int, max_new_tokens: int, choose) -> torch.Tensor:
        """Prefill once, repeat the cache `k` ways, decode `k` rows; `choose(seqs, logits)` picks each next token."""
        prompt_len = inputs["input_ids"].shape[1]
        position_ids, next_pos = prompt_rope_positions(self.model.model, inputs)
        delta = int(next_pos[0]) - prompt_len  # one unpadded prompt: what images shift text positions by
        cache = DynamicCache(config=self.model.config)
        out = self.model(**inputs, position_ids=position_ids, cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(k)  # [1, heads, L, d] -> [K, heads, L, d]
        logits = out.logits[:, -1].float().expand(k, -1)
        seqs = inputs["input_ids"].expand(k, -1)  # what the warpers see, as in generate()
        unfinished = torch.ones(k, dtype=torch.long, device=self.device)
        new_tokens = []
        for step in range(max_new_tokens):
            nxt = choose(seqs, logits)
            nxt = nxt * unfinished + self.pad_id * (1 - unfinished)
            new_tokens.append(nxt)
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            unfinished = unfinished & ~torch.isin(nxt, self.eos_ids)
            if not unfinished.any() or step == max_new_tokens - 1:
                break
            pos = torch.full((3, k, 1), prompt_len + step + delta, dtype=torch.long, device=self.device)
            out = self.model(input_ids=nxt[:, None], position_ids=pos, cache=cache, use_cache=True)
            logits = out.logits[:, -1].float()
        return torch.stack(new_tokens, dim=1)

    def _decode(self, tokens: torch.Tensor) -> Candidates:
        texts, lengths = [], []
        for row in tokens.tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in self.eos_ids.tolist()), len(row))
            lengths.append(end)
            texts.append(self.processor.decode(row[:end], skip_special_tokens=True).strip())
        return Candidates(texts, lengths)


class VLLMSampler:
    """Sampling with vLLM (GPU only; `pip install vllm`). Seeds per prompt through `SamplingParams(seed=...)`."""

    def __init__(self, model_path: str, dtype: str = "bfloat16", min_pixels: int | None = None,
                 max_pixels: int | None = None, max_images_per_prompt: int = 4):  # fmt: skip
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("backend='vllm' needs vLLM on a GPU machine: `pip install vllm`") from e
        self.processor = load_processor(model_path, min_pixels=min_pixels, max_pixels=max_pixels)
        mm_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        # vLLM reserves memory for `limit_mm_per_prompt` images of the largest size: bound both.
        self.llm = LLM(model=model_path, dtype=dtype, mm_processor_kwargs=mm_kwargs or None,
                       limit_mm_per_prompt={"image": max_images_per_prompt})  # fmt: skip

    def sample(self, prompt: Mapping[str, Any], params: SamplingParams, seed: int) -> Candidates:
        from vllm import SamplingParams as VLLMParams

        vparams = VLLMParams(n=params.num_samples, temperature=params.temperature, top_p=params.top_p,
                             top_k=params.top_k or -1, max_tokens=params.max_new_tokens, repetition_penalty=1.0,
                             seed=seed)  # fmt: skip
        return self._generate([prompt], vparams)[0]

    def greedy(self, prompts: Sequence[Mapping[str, Any]], max_new_tokens: int) -> list[Candidates]:
        """The greedy answer to each prompt (temperature 0), all prompts in one `generate` call (vLLM batches them)."""
        from vllm import SamplingParams as VLLMParams

        return self._generate(prompts, VLLMParams(n=1, temperature=0.0, max_tokens=max_new_tokens))

    def _generate(self, prompts: Sequence[Mapping[str, Any]], vparams) -> list[Candidates]:
        requests = []
        for prompt in prompts:
            text = self.processor.apply_chat_template(prompt["prompt"], add_generation_prompt=True, tokenize=False)
            request: dict[str, Any] = {"prompt": text}
            if prompt.get("images"):
                request["multi_modal_data"] = {"image": [load_image(im) for im in prompt["images"]]}
            requests.append(request)
        results = self.llm.generate(requests, vparams, use_tqdm=False)
        return [Candidates([o.text.strip() for o in r.outputs], [len(o.token_ids) for o in r.outputs]) for r in results]


def make_sampler(backend: str, model_path: str, dtype: str, device: str, min_pixels: int | None,
                 max_pixels: int | None, max_prompt_tokens: int | None = None) -> Sampler:  # fmt: skip
    """The sampler for `backend` (`"hf"` or `"vllm"`)."""
    if backend == "hf":
        return HFSampler(model_path, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels,
                         max_prompt_tokens=max_prompt_tokens)  # fmt: skip
    if backend == "vllm":
        return VLLMSampler(model_path, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels)
    raise ValueError(f"unknown sampling backend {backend!r}; choose 'hf' or 'vllm'")
