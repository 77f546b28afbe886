"""The rounds' `eval_benchmarks:` and `eval_command:` on the tiny model: every round's policy is measured on the
policy benchmarks and by a stand-in external evaluator, and the figures sit in round.json, the log and report.md."""

import json
import sys
from pathlib import Path

import pytest

from policy_eval import BENCHMARKS, breakdown
from rounds.config import RoundsConfig
from rounds.loop import run_rounds
from tests.policy_eval.hub_fixtures import write_all
from tests.policy_eval.stand_in_evaluator import score_of

STAND_IN = Path(__file__).resolve().parents[1] / "policy_eval" / "stand_in_evaluator.py"


class LengthScorer:
    def score_groups(self, groups):
        return [[len(r) / 10 for r in g.responses] for g in groups]


def test_each_round_reports_its_policy_benchmarks_and_external_figures(rounds_args, tmp_path):
    data = write_all(tmp_path / "bench")
    cfg = RoundsConfig(**{**rounds_args, "num_rounds": 1, "output_dir": str(tmp_path / "rounds"),
                          "eval_benchmarks": [f"mmstar={data['mmstar']}", f"ai2d={data['ai2d']}"],
                          "eval_command": f"{sys.executable} {STAND_IN} --model {{policy}} --output_path {{output_dir}}"})  # fmt: skip
    run_rounds(cfg, scorer=LengthScorer())
    out = Path(cfg.output_dir)
    evals = {0: json.loads((out / "round-00" / "round.json").read_text())["eval"],
             1: json.loads((out / "round-01" / "round.json").read_text())["eval"]}  # fmt: skip
    policies = {0: cfg.policy_name_or_path, 1: str(out / "round-01" / "mpo")}
    for r, ev in evals.items():
        rows = [json.loads(line) for line in (out / f"round-{r:02d}" / "benchmarks" / "predictions.jsonl").open()]
        for name in ("mmstar", "ai2d"):  # the round's own predictions give its figures
            mine = [row for row in rows if row["benchmark"] == name]
            assert ev[f"benchmark/{name}"] == breakdown(mine, BENCHMARKS[name].BREAKDOWN)["overall"]
        # the stand-in's score is fixed by the folder it evaluated: that round's policy
        assert ev["external/mmstar/average,none"] == pytest.approx(score_of(policies[r]))
    report = (out / "report.md").read_text()
    assert "| round | held-out correct | mmstar | ai2d | mmstar/average,none (eval_command) |" in report
    ext = [evals[r]["external/mmstar/average,none"] for r in (0, 1)]
    assert f"- mmstar/average,none (eval_command): {ext[0]:.3f} -> {ext[1]:.3f} over 1 rounds" in report
    log = (out / "rounds.log").read_text()
    assert f"round 1: held-out correct {evals[1]['accuracy']}; mmstar {evals[1]['benchmark/mmstar']:.3f}" in log
    wandb_scalars = {f"eval/{k}" for k, v in evals[1].items() if isinstance(v, (int, float))}  # what _log_wandb logs
    assert {"eval/benchmark/mmstar", "eval/benchmark/ai2d", "eval/external/mmstar/average,none"} <= wandb_scalars


def test_unknown_benchmarks_and_bad_templates_are_refused(rounds_args, tmp_path):
    cfg = RoundsConfig(**{**rounds_args, "output_dir": str(tmp_path / "r"), "eval_benchmarks": ["mmbench=x"],
                          "eval_command": "lmms-eval --model_args pretrained={model}"})  # fmt: skip
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert "eval_benchmarks: unknown 'mmbench'" in str(err.value) and "placeholder other than" in str(err.value)
