"""The run's report across rounds: `report.md` (a table per round, the guards' verdicts) and PNG plots
(`rounds_metrics.png`, `rounds_pair_rewards.png`, `rounds_mpo_losses.png`). Rewritten after every round."""

from __future__ import annotations

import math
from pathlib import Path

from common.io import write_text_atomic
from common.tracking import pyplot, save_figure
from policy_eval.rounds_hook import report_lines
from rounds.guards import wilson_interval

LOSSES = ("loss", "loss/dpo", "loss/bco", "loss/sft")
PLOTS = ("metrics", "pair_rewards", "mpo_losses")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _rate(ev: dict) -> str:
    """Held-out correctness with its Wilson 95% interval, e.g. `0.453 [0.393, 0.514]`."""
    if "accuracy" not in ev:
        return "-"
    low, high = ev.get("accuracy_interval") or wilson_interval(round(ev["accuracy"] * ev["judged"]), ev["judged"])
    return f"{ev['accuracy']:.3f} [{low:.3f}, {high:.3f}]"


def round_table(records: dict[int, dict]) -> str:
    """The per-round markdown table (deterministic: no timings)."""
    lines = ["| round | from | pairs | chosen correct | rejected correct | reward-length corr. | "
             "held-out correct [95% CI] | mean reward | reward std | held-out RM reward | length | degenerate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(records):
        rec, ev = records[r], records[r]["eval"]
        st = rec.get("stats", {})
        cells = [r, rec.get("start_round", r - 1 if r else None), st.get("pairs"), st.get("chosen_correct"),
                 st.get("rejected_correct"), st.get("length_bias"), _rate(ev), ev.get("reward_mean"),
                 ev.get("reward_std"), ev.get("heldout_reward_mean"), ev.get("length_mean"),
                 ev.get("degenerate_rate")]  # fmt: skip
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, records: dict[int, dict], result: dict | None = None) -> None:
    lines = ["# Rounds report", "", "Round 0 is the initial policy; `from` is the round whose policy a round started "
             "from. Held-out figures are greedy answers to the held-out prompts (correctness with its Wilson 95% "
             "interval); pair figures are this round's reward-ranked pairs.", "", round_table(records), ""]  # fmt: skip
    for r in sorted(records):
        rec = records[r]
        for w in rec.get("health") or []:
            lines.append(f"- round {r}: MPO health warning: {w}")
        if rec.get("alarm"):
            lines.append(f"- round {r}: **reward-hacking alarm**: {rec['alarm']}")
        if r > 1 and rec.get("start_round", r - 1) != r - 1:
            lines.append(f"- round {r}: started from round {rec['start_round']}'s policy, not round {r - 1}'s "
                         "(unhealthy; on_unhealthy: rollback)")  # fmt: skip
    if result is not None:
        stop, unhealthy = result["stopped"], result.get("unhealthy_rounds")
        lines += ["", f"Result: round {result['best_round']}'s policy, `{result['policy']}`"
                  + (f" (the loop stopped after round {stop['round']}: {stop['reason']})." if stop else ".")
                  + (f" Unhealthy rounds: {', '.join(map(str, unhealthy))}." if unhealthy else "")]  # fmt: skip
    lines += ["", *report_lines(records)]
    lines += ["![metrics](rounds_metrics.png)", "![pair rewards](rounds_pair_rewards.png)",
              "![MPO losses](rounds_mpo_losses.png)"]  # fmt: skip
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    _plots(out, records)


def _plots(out: Path, records: dict[int, dict]) -> None:
    plt = pyplot()
    rounds = sorted(records)
    metrics = [("accuracy", "held-out correctness"), ("reward_mean", "held-out mean reward"),
               ("length_mean", "answer length (tokens)"), ("degenerate_rate", "degenerate rate")]  # fmt: skip
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for ax, (key, title) in zip(axes, metrics):
        ys = [records[r]["eval"].get(key, math.nan) for r in rounds]
        if key == "reward_mean":
            err = [records[r]["eval"].get("reward_std", 0.0) for r in rounds]
            ax.errorbar(rounds, ys, yerr=err, marker="o", capsize=3)
        else:
            ax.plot(rounds, ys, marker="o")
        ax.set(title=title, xlabel="round", xticks=rounds)
    save_figure(fig, out / "rounds_metrics.png")

    trained = [r for r in rounds if r > 0]
    fig, axes = plt.subplots(1, max(len(trained), 1), figsize=(4 * max(len(trained), 1), 3.2), squeeze=False)
    for ax, r in zip(axes[0], trained):
        st = records[r].get("stats", {})
        for side in ("chosen", "rejected"):
            if st.get(f"{side}_scores"):
                ax.hist(st[f"{side}_scores"], bins=20, alpha=0.6, label=side)
        ax.set(title=f"round {r}: pair rewards", xlabel="reward")
        ax.legend()
    save_figure(fig, out / "rounds_pair_rewards.png")

    fig, axes = plt.subplots(1, len(LOSSES), figsize=(4 * len(LOSSES), 3.2))
    for ax, key in zip(axes, LOSSES):
        offset = 0
        for r in trained:
            train = (records[r].get("mpo") or {}).get("train", [])
            pts = [(offset + h["step"], h[key]) for h in train if key in h]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=f"round {r}")
                offset = pts[-1][0]
        ax.set(title=key, xlabel="MPO step (cumulative)")
        if trained:
            ax.legend()
    save_figure(fig, out / "rounds_mpo_losses.png")
