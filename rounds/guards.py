"""The loop's guards, as pure functions of the per-round records (each returns its verdict with the evidence).

* `hacking_alarm`: held-out reward rising while held-out correctness (or a second, held-out reward model) falls by
  more than a tolerance from the previous round: the policy is learning the reward model, not the task.
* `best_round`: which round's policy to keep: highest held-out correctness; without ground truth, the held-out
  reward model's mean; without either, the training reward model's mean.
* `length_bias`: Pearson correlation between reward and response length among a round's sampled candidates.
* `wilson_interval`: the 95% interval of a held-out rate (correct answers out of judged ones).
* `mpo_health`: the MPO failure modes users report: a loss near zero from the first steps, reward accuracy saturating
  at 1.0 while the SFT loss rises, and too many degenerate answers on held-out prompts.
* `correctness_drop`: held-out correctness below the 95% interval of the round's starting policy (a health warning).
* `start_round`: which round's policy the next round starts from (`on_unhealthy`: 'rollback' skips unhealthy rounds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (z = 1.96: 95%); (0, 1) when n = 0. Unlike the normal approximation it
    stays inside [0, 1] and is honest for small n and rates near 0 or 1 (Wilson 1927; Brown, Cai & DasGupta 2001)."""
    if n <= 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def hacking_alarm(prev: Mapping, cur: Mapping, tolerance: float) -> dict | None:
    """The alarm's evidence when `cur` (a round's eval metrics) shows reward hacking relative to `prev`, else None."""
    reward_up = cur.get("reward_mean", -math.inf) > prev.get("reward_mean", math.inf)
    if not reward_up:
        return None
    falls = {}
    for key in ("accuracy", "heldout_reward_mean"):
        if key in cur and key in prev and prev[key] - cur[key] > tolerance:
            falls[key] = [prev[key], cur[key]]
    if not falls:
        return None
    return {"reward_mean": [prev["reward_mean"], cur["reward_mean"]], "fell": falls, "tolerance": tolerance}


def best_round(evals: Mapping[int, Mapping]) -> int:
    """The round (0 = the initial policy) whose held-out metrics are best; the earliest wins a tie. To keep only
    healthy rounds, pass only those (`keepable`)."""
    for key in ("accuracy", "heldout_reward_mean", "reward_mean"):
        if all(key in m for m in evals.values()):
            return max(sorted(evals), key=lambda r: evals[r][key])
    return max(evals)


def length_bias(reward_length: Sequence[Sequence[float]]) -> float | None:
    """Pearson correlation of (reward, length) pairs; None with fewer than 2 or a constant column."""
    if len(reward_length) < 2:
        return None
    rewards, lengths = zip(*reward_length)
    if len(set(rewards)) < 2 or len(set(lengths)) < 2:
        return None
    return statistics.correlation([float(r) for r in rewards], [float(n) for n in lengths])


def mpo_health(train_log: Sequence[Mapping], degenerate_rate: float | None, min_first_loss: float,
               max_degenerate: float) -> list[str]:  # fmt: skip
    """Warnings (empty: healthy) from MPO's logged steps (`mpo_history.json` 'train') and the held-out eval."""
    warnings = []
    logged = [h for h in train_log if "loss" in h]
    if logged and abs(logged[0]["loss"]) < min_first_loss:
        warnings.append(f"loss near zero from the first steps: {logged[0]['loss']:.2e} at step {logged[0]['step']} "
                        "(chosen and rejected indistinguishable, or the reference already separates them)")  # fmt: skip
    half = len(logged) // 2
    if half >= 1:
        first, last = logged[:half], logged[half:]
        acc = [h["rewards/accuracies"] for h in last if "rewards/accuracies" in h]
        sft = lambda hs: statistics.fmean(h["loss/sft"] for h in hs)  # noqa: E731
        if acc and min(acc) >= 1.0 and all("loss/sft" in h for h in logged) and sft(last) > sft(first):
            warnings.append(f"reward accuracy saturated at 1.0 while the SFT loss rose ({sft(first):.3f} -> "
                            f"{sft(last):.3f}): the policy pushes rejected down instead of chosen up")  # fmt: skip
    if degenerate_rate is not None and degenerate_rate > max_degenerate:
        warnings.append(f"degenerate held-out answers: {degenerate_rate:.3f} > {max_degenerate}")
    return warnings


def correctness_drop(start: Mapping, cur: Mapping) -> list[str]:
    """A warning when the round's held-out correctness (`cur`) is below the Wilson 95% interval of its starting
    policy's (`start`): a fall the held-out set's size cannot explain."""
    if "accuracy" not in start or "accuracy" not in cur:
        return []
    low, _ = wilson_interval(round(start["accuracy"] * start["judged"]), start["judged"])
    if cur["accuracy"] >= low:
        return []
    return [f"held-out correctness fell beyond the starting policy's 95% interval: {cur['accuracy']:.3f} < "
            f"{low:.3f} (start {start['accuracy']:.3f})"]  # fmt: skip


def keepable(records: Mapping[int, Mapping], on_unhealthy: str) -> dict[int, Mapping]:
    """The rounds' evals a policy may be kept or continued from: without 'continue', only healthy rounds."""
    return {r: rec["eval"] for r, rec in records.items() if on_unhealthy == "continue" or not rec.get("health")}


def start_round(records: Mapping[int, Mapping], on_unhealthy: str) -> int:
    """The round whose policy the next round starts from: the last one, or under 'rollback' after an unhealthy last
    round, the best healthy round so far (round 0, the initial policy, is always healthy)."""
    last = max(records)
    if on_unhealthy != "rollback" or not records[last].get("health"):
        return last
    return best_round(keepable(records, on_unhealthy))
