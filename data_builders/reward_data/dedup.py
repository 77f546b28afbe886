"""Duplicate detection: keys of a pair (normalised text, image pixels, MinHash, perceptual hashes) and the index.

* **exact**: sha256 of the normalised prompt and responses (NFKC, lower case, whitespace collapsed) and of each
  image's decoded pixels, so the same picture saved twice as PNG is the same key.
* **near**: the text's MinHash (character 5-grams of prompt + responses) finds candidates in an LSH index
  (`datasketch.MinHashLSH`); a candidate is a duplicate when its estimated Jaccard similarity reaches the threshold
  and it has as many images, each within `image_distance` bits of perceptual hash (`imagehash.phash`, 64 bits), so a
  re-encoded JPEG of the same picture matches.

The index is the only state that grows with the input: per kept pair one exact key, `num_perm` 32-bit hash values,
the LSH band entries and the image hashes. `DedupIndex.save_chunk`/`load_chunk` persist a chunk's keys so a
resumed job rebuilds the same index.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from datasketch import MinHash, MinHashLSH

from common.images import CANNOT_DECODE, ImageError, load_image
from common.io import atomic_tmp_path

SHINGLE = 5
SCHEME = "affine32"  # 32-bit hash values: stored as uint32


@functools.lru_cache(maxsize=4)
def _permutations(num_perm: int) -> np.ndarray:
    """The seeded permutations, made once (datasketch draws them anew for every MinHash: ~1 ms each)."""
    return MinHash(num_perm=num_perm, seed=1, scheme=SCHEME).permutations


def sketch(hash_values: np.ndarray) -> MinHash:
    """A MinHash from stored values (for LSH insert and query)."""
    return MinHash(seed=1, hashvalues=hash_values.astype(np.uint64), permutations=_permutations(len(hash_values)),
                   scheme=SCHEME)  # fmt: skip


def normalize_text(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def messages_text(messages: Sequence[Mapping]) -> str:
    """The normalised text of messages, each prefixed with its role (multi-turn prompts stay distinct)."""
    parts = []
    for m in messages:
        content = m["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text") or "" for p in content)
        parts.append(f"{m['role']}: {normalize_text(text)}")
    return "\n".join(parts)


@dataclass
class ImageKey:
    sha: str  # sha256 of the decoded RGB pixels and the size
    phash: int  # 64-bit perceptual hash
    width: int
    height: int


def image_key(data: bytes) -> ImageKey:
    """Decode an image once and hash it (raises `common.images.ImageError` if it cannot be used)."""
    rgb = load_image({"bytes": data, "path": None})  # the toolkit's one checked loader (size, aspect ratio)
    sha = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    return ImageKey(sha, int(str(imagehash.phash(rgb)), 16), rgb.width, rgb.height)


def image_keys(images: Sequence[bytes]) -> list[ImageKey] | str:
    """The keys of one record's images, or why one cannot be used (a picklable result for a process pool)."""
    try:
        return [image_key(b) for b in images]
    except ImageError as e:
        return e.problem
    except (OSError, ValueError, SyntaxError):
        return CANNOT_DECODE


def minhash(text: str, num_perm: int) -> np.ndarray:
    """MinHash values (uint32) of the text's character 5-grams (the whole text when shorter), hashed with CRC32
    (deterministic across processes, and a C call: sha1 was the job's hottest function)."""
    shingles = {text[i : i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}
    m = MinHash(num_perm=num_perm, seed=1, hashfunc=zlib.crc32, permutations=_permutations(num_perm), scheme=SCHEME)
    m.update_batch([s.encode() for s in sorted(shingles)])
    return m.hashvalues.astype(np.uint32)


def images_close(a: Sequence[int], b: Sequence[int], distance: int) -> bool:
    """Same number of images, each pair (in order) within `distance` bits of perceptual hash."""
    return len(a) == len(b) and all(bin(x ^ y).count("1") <= distance for x, y in zip(a, b))


@dataclass
class PairKeys:
    """What the index knows of one pair."""

    exact: str
    text_hash: np.ndarray  # MinHash of prompt + responses
    phashes: tuple[int, ...]


def pair_keys(prompt_text: str, chosen_text: str, rejected_text: str, images: Sequence[ImageKey],
              num_perm: int) -> PairKeys:  # fmt: skip
    text = f"{prompt_text}\n\x1f{chosen_text}\n\x1f{rejected_text}"
    exact = hashlib.sha256((text + "\x1e" + "|".join(k.sha for k in images)).encode()).hexdigest()
    return PairKeys(exact, minhash(text, num_perm), tuple(k.phash for k in images))


class DedupIndex:
    """Exact and near-duplicate index over the pairs kept so far (insertion order decides which copy stays)."""

    def __init__(self, exact: bool, near: bool, text_threshold: float, image_distance: int, num_perm: int):
        self.use_exact, self.use_near = exact, near
        self.text_threshold, self.image_distance, self.num_perm = text_threshold, image_distance, num_perm
        self.exact: dict[str, str] = {}
        self.lsh = MinHashLSH(threshold=text_threshold, num_perm=num_perm)
        self.text_hash: dict[str, np.ndarray] = {}
        self.phashes: dict[str, tuple[int, ...]] = {}
        self.order: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.order)

    def find(self, keys: PairKeys) -> tuple[str, str] | None:
        """("exact" or "near", id of the earlier pair) when `keys` duplicates a pair in the index, else None."""
        if self.use_exact and keys.exact in self.exact:
            return "exact", self.exact[keys.exact]
        if self.use_near and self.order:
            candidates = self.lsh.query(sketch(keys.text_hash))
            for rid in sorted(candidates, key=self.order.__getitem__):
                similar = float(np.mean(self.text_hash[rid] == keys.text_hash)) >= self.text_threshold
                if similar and images_close(self.phashes[rid], keys.phashes, self.image_distance):
                    return "near", rid
        return None

    def add(self, rid: str, keys: PairKeys) -> None:
        self.order[rid] = len(self.order)
        if self.use_exact:
            self.exact.setdefault(keys.exact, rid)
        if self.use_near:
            self.text_hash[rid] = keys.text_hash
            self.phashes[rid] = keys.phashes
            self.lsh.insert(rid, sketch(keys.text_hash))

    @staticmethod
    def save_chunk(path: Path, ids: list[str], keys: list[PairKeys], num_perm: int) -> None:
        """Persist the keys of a chunk's kept pairs (atomic), so a resumed run rebuilds the same index."""
        tmp = atomic_tmp_path(path)
        hashes = np.stack([k.text_hash for k in keys]) if keys else np.zeros((0, num_perm), np.uint32)
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(ids, dtype=str), exact=np.array([k.exact for k in keys], dtype=str),
                     text_hash=hashes, phashes=np.array(json.dumps([list(k.phashes) for k in keys])))  # fmt: skip
        os.replace(tmp, path)

    def load_chunk(self, path: Path) -> None:
        with np.load(path) as z:
            phashes = json.loads(str(z["phashes"]))
            for rid, exact, th, ph in zip(z["ids"].tolist(), z["exact"].tolist(), z["text_hash"], phashes):
                self.add(rid, PairKeys(exact, th.astype(np.uint32), tuple(ph)))
