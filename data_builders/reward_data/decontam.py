"""Decontamination: drop training pairs whose prompt (and image) match an evaluation item, and list them.

A training pair matches a benchmark item when its normalised prompt text equals the item's or their MinHash Jaccard
similarity reaches `text_threshold`, and, for an item with images, one of the pair's images is within
`image_distance` bits of perceptual hash of one of the item's (a generic question such as "Describe the image."
alone is no overlap). Text-only items (RewardBench) match on the prompt alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import MinHashLSH

from common.images import image_bytes
from common.io import SkipLog
from data_builders.reward_data.config import BenchmarkSpec
from data_builders.reward_data.dedup import image_key, messages_text, minhash, sketch
from reward.bench import read_benchmark  # the one import of the benchmark readers


@dataclass
class BenchmarkItem:
    benchmark: str
    item_id: str
    phashes: tuple[int, ...]


@dataclass
class Match:
    benchmark: str
    item_id: str
    kind: str  # "exact" (equal normalised prompt) or "near" (MinHash)


class BenchmarkIndex:
    """The prompts and image hashes of every benchmark item, searchable by a training pair's prompt and images."""

    def __init__(self, specs: Sequence[BenchmarkSpec], text_threshold: float, image_distance: int, num_perm: int):
        self.text_threshold, self.image_distance, self.num_perm = text_threshold, image_distance, num_perm
        self.items: list[BenchmarkItem] = []
        self.by_text: dict[str, list[int]] = {}
        self.hashes: list[np.ndarray] = []
        self.lsh = MinHashLSH(threshold=text_threshold, num_perm=num_perm)
        self.skipped: dict[str, dict] = {}
        self.sizes: dict[str, int] = {}
        for spec in specs:
            skips = SkipLog()
            examples = read_benchmark(spec.name, spec.path, on_bad_record="skip", skipped=skips)
            self.skipped[spec.name], self.sizes[spec.name] = skips.to_dict(), len(examples)
            for ex in examples:
                item_id = str(ex.row.get("id", ex.row.get("ID")))
                phashes = tuple(image_key(image_bytes(im)["bytes"]).phash for im in ex.group.images)
                self._add(BenchmarkItem(spec.name, item_id, phashes), messages_text(ex.group.prompt))

    def _add(self, item: BenchmarkItem, text: str) -> None:
        k = len(self.items)
        self.items.append(item)
        self.by_text.setdefault(text, []).append(k)
        self.hashes.append(minhash(text, self.num_perm))
        self.lsh.insert(k, sketch(self.hashes[k]))

    def __len__(self) -> int:
        return len(self.items)

    def find(self, prompt_text: str, phashes: Sequence[int]) -> Match | None:
        """The first benchmark item (in benchmark order) the training prompt and images match, or None."""
        if not self.items:
            return None
        exact = set(self.by_text.get(prompt_text, []))
        text_hash = minhash(prompt_text, self.num_perm)
        near = set(self.lsh.query(sketch(text_hash)))
        for k in sorted(exact | near):
            if k not in exact and float(np.mean(self.hashes[k] == text_hash)) < self.text_threshold:
                continue
            item = self.items[k]
            if item.phashes and not any(bin(a ^ b).count("1") <= self.image_distance
                                        for a in item.phashes for b in phashes):  # fmt: skip
                continue
            return Match(item.benchmark, item.item_id, "exact" if k in exact else "near")
        return None
