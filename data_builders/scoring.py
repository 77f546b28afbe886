"""The pair builder's reward model as a `common.scoring.Scorer`: local (`RewardScorer`) or a reward server's client,
and what a run scoring through a server records in its identity (`ServedRewardModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.scoring import Scorer
from reward.scorer import RewardScorer


def make_scorer(path: str, dtype: str, device: str, batch_size: int, min_pixels: int | None,
                max_pixels: int | None) -> Scorer:  # fmt: skip
    """The local reward model at `path` as a `Scorer` (no progress bar of its own: the build job has one)."""
    return RewardScorer.from_pretrained(path, dtype=dtype, device=device, batch_size=batch_size,
                                        min_pixels=min_pixels, max_pixels=max_pixels, progress=False)  # fmt: skip


def make_remote_scorer(urls: list[str], batch_size: int) -> Scorer:
    """Reward server replicas at `urls` (recipes/serve_reward.py) as a `Scorer`; `batch_size` responses a request."""
    from reward.client import RewardClient  # needs the `serve` extra (httpx)

    return RewardClient(urls, max_items_per_request=batch_size)


@dataclass
class ServedRewardModel:
    """The model behind a job's `reward_url`, as the run's identity records it (`common.run_folder`, passed beside the
    job's config): the server's `/info` fingerprint (the content hash `common.run_folder.fingerprint` gives the model
    folder) and dtype, never the URLs. A rerun may reach the same model through other replicas and resume; another
    model behind the same URL is refused, naming the fingerprint that changed."""

    served_model_fingerprint: str
    served_dtype: str | None

    @classmethod
    def of(cls, urls: Sequence[str]) -> ServedRewardModel:
        """Ask every replica (`RewardClient.model_info`: they must agree)."""
        from reward.client import RewardClient

        with RewardClient(list(urls)) as client:
            info = client.model_info()
        return cls(info["model_fingerprint"], info.get("dtype"))
