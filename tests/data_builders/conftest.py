"""Fixtures of the data_builders tests: deterministic stand-ins for sampler and scorer."""

from __future__ import annotations

import hashlib

from data_builders.sampling import Candidates, PromptTooLong


class ChoiceSampler:
    """Answers each toy prompt with one sentence per choice (the right one among them), in a seed-dependent order."""

    def __init__(self, fail_ids=(), too_long_ids=()):
        self.fail_ids, self.too_long_ids = set(fail_ids), set(too_long_ids)
        self.calls = []

    def sample(self, prompt, params, seed):
        self.calls.append(prompt["id"])
        if prompt["id"] in self.fail_ids:
            raise ValueError(f"{prompt['id']}: the backend failed")
        if prompt["id"] in self.too_long_ids:
            raise PromptTooLong(f"{prompt['id']}: too long")
        others = [c for c in prompt["choices"] if c != prompt["answer"]][: params.num_samples - 1]
        picks = sorted([prompt["answer"], *others], key=lambda c: hashlib.sha256(f"{seed}/{c}".encode()).hexdigest())
        texts = [f"It is {c}." for c in picks]
        return Candidates(texts, [len(t.split()) for t in texts])


class HashScorer:
    """Scores in [0, 1) from a hash of (prompt, response): deterministic, order-free; NaN for `nan_responses`; raises
    for a group whose prompt contains `fail_if_prompt_has`."""

    def __init__(self, nan_responses=(), fail_if_prompt_has=None):
        self.nan_responses, self.fail_if_prompt_has = set(nan_responses), fail_if_prompt_has
        self.groups = 0

    def score_groups(self, groups):
        self.groups += len(groups)
        out = []
        for g in groups:
            key = str(g.prompt)
            if self.fail_if_prompt_has and self.fail_if_prompt_has in key:
                raise ValueError("conversation longer than max_length")
            out.append([float("nan") if r in self.nan_responses else
                        int(hashlib.sha256(f"{key}/{r}".encode()).hexdigest()[:8], 16) / 2**32
                        for r in g.responses])  # fmt: skip
        return out
