"""`VLRewardFunc`: the VL reward model as a TRL GRPO reward function, images included.

    from trl import GRPOTrainer
    reward = VLRewardFunc(url="http://127.0.0.1:8000")      # or VLRewardFunc(model="outputs/reward-tiny")
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=dataset, ...)

TRL calls it with `prompts` (conversational messages; for VLM data TRL has put each image into its `{"type":
"image", "image": ...}` part), `completions` (`[{"role": "assistant", "content": text}]`, or plain strings) and every
dataset column as a keyword (`images` / `image` among them). Consecutive completions of one prompt (TRL's
`num_generations`) are scored as one group, so the prompt and its images are encoded once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from common.scoring import Scorer, ScoringGroup


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def split_prompt(prompt: Any, images: Sequence | None) -> tuple[list[dict], list]:
    """(messages with `{"type": "image"}` placeholders, the images in placeholder order) for one TRL prompt."""
    if isinstance(prompt, str):
        raise ValueError("VLRewardFunc needs conversational prompts (a list of messages), got a string")
    given = list(images or [])
    messages, found = [], []
    for m in prompt:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.get("type") == "image":
                    if p.get("image") is not None:
                        found.append(p["image"])
                    parts.append({"type": "image"})
                else:
                    parts.append(dict(p))
            content = parts
        messages.append({"role": m["role"], "content": content})
    n_placeholders = sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"]
                         if p["type"] == "image")  # fmt: skip
    out = found if len(found) == n_placeholders else given
    if len(out) != n_placeholders:
        raise ValueError(f"prompt has {n_placeholders} image placeholder(s) but {len(out)} image(s) were given")
    return messages, out


class VLRewardFunc:
    """A TRL reward function scoring completions with the VL reward model, locally or through the reward server.

    Args:
        model: reward model folder, scored in this process (`reward.scorer.RewardScorer`).
        url: reward server URL(s) instead (`reward.client.RewardClient`).
        scorer: a ready `common.scoring.Scorer` instead of either.
        api_key: the server's key (with `url`).
        **options: `ScorerConfig` fields (with `model`) or `RewardClient` options (with `url`).
    """

    __name__ = "vl_reward"  # TRL names the reward column after it

    def __init__(self, model: str | None = None, url: str | Sequence[str] | None = None, scorer: Scorer | None = None,
                 api_key: str | None = None, **options):  # fmt: skip
        if sum(x is not None for x in (model, url, scorer)) != 1:
            raise ValueError("VLRewardFunc needs exactly one of model=PATH, url=URL or scorer=...")
        if scorer is None and model is not None:
            from reward.scorer import RewardScorer

            scorer = RewardScorer.from_pretrained(model, **{"progress": False, **options})
        elif scorer is None:
            from reward.client import RewardClient

            scorer = RewardClient(url, api_key=api_key, **options)
        self.scorer = scorer

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None, images: list | None = None,
                 image: list | None = None, **kwargs) -> list[float]:  # fmt: skip
        if images is None and image is not None:
            images = [[im] if im is not None else [] for im in image]
        groups: list[ScoringGroup] = []
        last_key = None
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            messages, imgs = split_prompt(prompt, images[i] if images is not None else None)
            key = (json.dumps(messages, sort_keys=True), [_digest(im) for im in imgs])
            response = _text(completion[-1]["content"]) if isinstance(completion, list) else completion
            if key != last_key:
                groups.append(ScoringGroup(messages, imgs, []))
                last_key = key
            groups[-1].responses.append(response)
        return [s for scores in self.scorer.score_groups(groups) for s in scores]


def _digest(image: Any) -> str:
    """Content digest of a PIL image (or the reference itself for a path / URI)."""
    if hasattr(image, "tobytes"):
        return hashlib.sha1(image.tobytes() + repr((image.mode, image.size)).encode()).hexdigest()
    return repr(image)
