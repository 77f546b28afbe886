"""`run_rounds(cfg)`: the iterative MPO loop, resumable at every stage with the same command.

Layout of `output_dir`::

    run_config.json        the run's identity: config fields + input fingerprints (`common.run_folder`; a rerun must match)
    rounds.log             one line per stage started, finished or found done (what a resumed run skipped)
    round-00/round.json    the initial policy's held-out evaluation
    round-01/state.json    the stage in progress ('prompts', 'pairs', 'mpo', 'eval')
    round-01/prompts/      this round's prompt slice (datasets folder, atomic)
    round-01/build/        `data_builders.build.build_pairs` output (resumes by chunk)
    round-01/mpo/          `mpo.train.train_mpo` output: the round's policy (resumes from its last checkpoint)
    round-01/eval.json     held-out metrics of the round's policy (atomic)
    round-01/round.json    the finished round: stats, guards, metrics (written last: marks the round done)
    result.json            the kept policy (best round), why the loop stopped; report.md and plots beside it

Each stage runs an existing job (`data_builders.build.build_pairs`, `mpo.train.train_mpo`) with the flags its recipe
takes (`recipes/build_pairs.py`, `recipes/mpo_qwen.py`): in this process when `cfg.launcher` is empty (CPU, one
GPU), else as that recipe under the launcher (e.g. `deepspeed --num_gpus 8`), so a stage gets every GPU and frees its
memory when it ends. A stage under the launcher runs in its own process group, ended with every rank in it when the
stage returns or the loop gets SIGTERM / SIGINT (`rounds.stage_process`); after a SIGKILL of the loop only the
launcher gets SIGKILL (`PR_SET_PDEATHSIG`), so stop leftover ranks before rerunning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from pathlib import Path

import datasets
import torch

from common.checkpoints import last_complete_checkpoint
from common.cli import parse_configs
from common.correctness import correctness, judge_for
from common.distributed import free_port
from common.io import SkipLog, write_records, write_text_atomic
from common.run_folder import claim_output_dir
from common.scoring import Scorer
from common.tracking import wandb_run
from data_builders.build import build_pairs
from data_builders.config import BuildPairsConfig
from data_builders.report import merge_stats
from data_builders.scoring import ServedRewardModel
from data_builders.sources import read_prompts
from mpo.config import MPOConfig
from mpo.train import train_mpo
from policy_eval.rounds_hook import figures_line, policy_figures
from reward.model import check_value_head
from rounds.config import RoundsConfig
from rounds.evaluation import evaluate_round
from rounds.guards import (
    best_round,
    correctness_drop,
    hacking_alarm,
    keepable,
    length_bias,
    mpo_health,
    start_round,
)
from rounds.report import PLOTS, write_report
from rounds.stage_process import run_stage

REPO = Path(__file__).resolve().parents[1]
# What the result depends on besides the config's fields: fingerprinted by content (`common.run_folder`).
INPUTS = ("policy_name_or_path", "reward_model_name_or_path", "heldout_reward_model_name_or_path", "prompts",
          "eval_prompts", "eval_pairs", "build_pairs_config", "mpo_config")  # fmt: skip


def _without_images(ds: datasets.Dataset) -> datasets.Dataset:
    return ds.remove_columns([c for c in ("images", "prompt") if c in ds.column_names])


def _config_path(path: str) -> str:
    """A stage YAML as given, or relative to the repository (the recipes' configs) when not found from here."""
    return path if Path(path).exists() or not (REPO / path).exists() else str(REPO / path)


class Rounds:
    """One run of the loop (see the module docstring); `run()` does or resumes it.

    Args:
        cfg: the loop's config.
        scorer / heldout_scorer: ready-made reward scorers (tests, a reward-server client) used for pair building and
            the evaluation instead of loading `reward_model_name_or_path` / `heldout_reward_model_name_or_path`;
            only without a launcher (the stages run in this process).
    """

    def __init__(self, cfg: RoundsConfig, scorer: Scorer | None = None, heldout_scorer: Scorer | None = None):
        cfg.validate()
        if scorer is None and not cfg.reward_url:  # value heads: checked before the folder is claimed
            check_value_head(cfg.reward_model_name_or_path, "reward_model_name_or_path")
        if heldout_scorer is None:
            check_value_head(cfg.heldout_reward_model_name_or_path, "heldout_reward_model_name_or_path")
        if cfg.launcher and (scorer is not None or heldout_scorer is not None):
            raise ValueError("ready-made scorers need the stages in this process: leave launcher empty")
        self.cfg, self.out = cfg, Path(cfg.output_dir)
        self.given_scorers = scorer, heldout_scorer
        self.device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    # > bookkeeping
    def log(self, line: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
        print(line, flush=True)
        with open(self.out / "rounds.log", "a") as f:
            f.write(line + "\n")

    def round_dir(self, r: int) -> Path:
        return self.out / f"round-{r:02d}"

    def record(self, r: int) -> dict | None:
        path = self.round_dir(r) / "round.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _stage(self, r: int, stage: str, done: bool) -> bool:
        """Log the stage and record it as in progress; True when it still has to run."""
        if done:
            self.log(f"round {r}: {stage}: already done")
            return False
        write_text_atomic(self.round_dir(r) / "state.json", json.dumps({"round": r, "stage": stage}))
        self.log(f"round {r}: {stage}: start")
        return True

    def _job(self, script: str, config_class: type, job, args: list[str], **kwargs) -> None:
        """Run a stage's job with its recipe's flags: here, or as the recipe under the launcher."""
        if self.cfg.launcher:
            return self._run(script, args)
        self.log(f"in process: {script} {shlex.join(args)}")
        job(*parse_configs([config_class], args), **kwargs)

    def _run(self, script: str, args: list[str]) -> None:
        launcher = shlex.split(self.cfg.launcher)
        if Path(launcher[0]).name == "deepspeed" and "--master_port" not in launcher:
            launcher += ["--master_port", str(free_port())]
        cmd = [*launcher, script, *args]
        threads = str(self.cfg.num_threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
        if self.cfg.report_to == "wandb":
            env["WANDB_RUN_GROUP"] = self.group
        self.log(f"$ {shlex.join(cmd)}")
        run_stage(cmd, REPO, env)

    @property
    def group(self) -> str:
        return self.cfg.run_name or self.out.resolve().name

    # > stages
    def _prompts(self, r: int, pool: datasets.Dataset) -> Path:
        path = self.round_dir(r) / "prompts"
        if self._stage(r, "prompts", path.exists()):
            n = len(pool)
            per = min(self.cfg.prompts_per_round or n, n)
            start = (r - 1) * per % n if self.cfg.prompt_schedule == "fresh" else 0
            write_records(pool.select([(start + i) % n for i in range(per)]), path)
        return path

    def _pairs(self, r: int, prompts: Path, policy: str) -> Path:
        build = self.round_dir(r) / "build"
        if self._stage(r, "pairs", (build / "run_meta.json").exists()):
            cfg = self.cfg
            args = ["--config", _config_path(cfg.build_pairs_config), *cfg.build_pairs_args, "--prompts", str(prompts),
                    "--policy_name_or_path", policy, "--output_dir", str(build), "--seed", str(cfg.seed + r),
                    "--length_penalty", str(cfg.length_penalty), "--progress", "false"]  # fmt: skip
            if cfg.reward_url:
                args += ["--reward_url", *cfg.reward_url]
            else:
                args += ["--reward_model_name_or_path", cfg.reward_model_name_or_path]
            if cfg.selection == "hybrid":
                args += ["--rule", "correctness"]
            self._job("recipes/build_pairs.py", BuildPairsConfig, build_pairs, args, scorer=self.given_scorers[0])
        return build / "pairs"

    def _mpo(self, r: int, pairs: Path, policy: str) -> Path:
        mpo = self.round_dir(r) / "mpo"
        if self._stage(r, "mpo", (mpo / "run_meta.json").exists()):
            cfg = self.cfg
            args = ["--config", _config_path(cfg.mpo_config), *cfg.mpo_args, "--model_name_or_path", policy, "--train_data",
                    str(pairs), "--output_dir", str(mpo), "--seed", str(cfg.seed + r), "--ref_logps_dir",
                    str(self.round_dir(r) / "ref_logps")]  # fmt: skip
            if cfg.reference == "initial":
                args += ["--ref_model_name_or_path", cfg.policy_name_or_path]
            if cfg.eval_pairs:
                args += ["--eval_pairs", cfg.eval_pairs]
            if cfg.report_to == "wandb":  # its own run in the group (WANDB_RUN_GROUP)
                args += ["--report_to", "wandb", "--run_name", f"{self.group}-round-{r}", "--wandb_project",
                         cfg.wandb_project]  # fmt: skip
            checkpoint = last_complete_checkpoint(mpo, remove_incomplete=False)
            if checkpoint:  # the MPO job resumes by itself on the same command, from its last complete checkpoint
                self.log(f"round {r}: mpo: resuming from the last complete checkpoint, {checkpoint}")
            self._job("recipes/mpo_qwen.py", MPOConfig, train_mpo, args)
        return mpo

    def _eval(self, r: int, policy: str, prompts: list[dict]) -> dict:
        path = (self.round_dir(r) / "eval.json") if r else (self.round_dir(0) / "round.json")
        if not self._stage(r, "eval", path.exists()):
            data = json.loads(path.read_text())
            return data["eval"] if r == 0 else data
        cfg = self.cfg
        scorer, heldout = self.given_scorers
        if scorer is None and cfg.reward_url:
            from data_builders.scoring import make_remote_scorer

            scorer = make_remote_scorer(cfg.reward_url, cfg.eval_batch_size)
        if scorer is None or (heldout is None and cfg.heldout_reward_model_name_or_path):
            # Loaded per evaluation and dropped after it: the stages that follow get the memory back.
            from reward.scorer import RewardScorer

            load = lambda p: RewardScorer.from_pretrained(p, device=self.device, progress=False)  # noqa: E731
            scorer = scorer or load(cfg.reward_model_name_or_path)
            if cfg.heldout_reward_model_name_or_path:
                heldout = heldout or load(cfg.heldout_reward_model_name_or_path)
        metrics = evaluate_round(policy, prompts, scorer, heldout, cfg.eval_max_new_tokens, cfg.eval_batch_size,
                                 self.device, cfg.degenerate_ngram)  # fmt: skip
        metrics.update(policy_figures(policy, self.round_dir(r), cfg.eval_benchmarks, cfg.eval_command,
                                      cfg.eval_max_new_tokens, self.device))  # fmt: skip
        if cfg.eval_benchmarks or cfg.eval_command:
            self.log(f"round {r}: held-out correct {metrics.get('accuracy')}; {figures_line(metrics)}")
        if r == 0:
            write_text_atomic(path, json.dumps({"round": 0, "policy": policy, "eval": metrics}, indent=2))
        else:
            write_text_atomic(path, json.dumps(metrics, indent=2))
        return metrics

    # > one round
    def _pair_stats(self, build: Path, prompts: Path) -> dict:
        chunks = sorted((build / "chunks").glob("chunk-*.json"))
        total = merge_stats(json.loads(c.read_text()) for c in chunks)
        if not total["pairs"]:  # (`datasets` cannot load an empty saved dataset)
            return {"pairs": 0, "candidates": total["candidates"], "prompt_skips": total["prompt_skips"],
                    "length_bias": length_bias(total.get("reward_length", []))}  # fmt: skip
        pairs = _without_images(datasets.load_from_disk(str(build / "pairs")))
        truth = {
            p["id"]: (p.get("answer"), p.get("choices"), judge_for(p))
            for p in _without_images(datasets.load_from_disk(str(prompts)))
        }
        judged = {"chosen": [], "rejected": []}
        for rec in pairs:
            answer, choices, judge = truth[json.loads(rec["meta"])["prompt_id"]]
            for side in judged:
                ok = correctness([rec[side][0]["content"][0]["text"]], answer, choices, judge=judge)
                if ok is not None:
                    judged[side].append(ok[0])
        rate = lambda v: sum(v) / len(v) if v else None  # noqa: E731
        return {"pairs": len(pairs), "candidates": total["candidates"], "prompt_skips": total["prompt_skips"],
                "length_bias": length_bias(total.get("reward_length", [])),
                "chosen_correct": rate(judged["chosen"]), "rejected_correct": rate(judged["rejected"]),
                "chosen_scores": list(pairs["chosen_score"]), "rejected_scores": list(pairs["rejected_score"])}  # fmt: skip

    def _round(self, r: int, pool: datasets.Dataset, eval_prompts: list[dict], start: int, prev: dict) -> dict:
        """Round `r`, from round `start`'s policy (`prev`: that round's record)."""
        t0, cfg = time.perf_counter(), self.cfg
        policy = prev["policy"]
        self.round_dir(r).mkdir(parents=True, exist_ok=True)
        prompts = self._prompts(r, pool)
        pairs = self._pairs(r, prompts, policy)
        stats = self._pair_stats(pairs.parent, prompts)
        self.log(f"round {r}: {stats['pairs']} pairs, chosen correct {stats.get('chosen_correct')}, rejected correct "
                 f"{stats.get('rejected_correct')}, reward-length correlation {stats['length_bias']}")  # fmt: skip
        rec = {"round": r, "start_round": start, "start_policy": policy, "stats": stats}
        if not stats["pairs"]:
            return {**rec, "policy": policy, "eval": prev["eval"], "stop": {"reason": "no pairs", "round": r}}
        mpo = self._mpo(r, pairs, policy)
        history = json.loads((mpo / "mpo_history.json").read_text())
        metrics = self._eval(r, str(mpo), eval_prompts)
        health = mpo_health(history["train"], metrics.get("degenerate_rate"), cfg.health_min_first_loss,
                            cfg.health_max_degenerate) + correctness_drop(prev["eval"], metrics)  # fmt: skip
        alarm = hacking_alarm(prev["eval"], metrics, cfg.hacking_tolerance)
        for w in health:
            self.log(f"round {r}: MPO health warning: {w}")
        if alarm:
            self.log(f"round {r}: REWARD-HACKING ALARM: {json.dumps(alarm)}")
        stop = None
        if alarm and cfg.stop_on_hacking:
            stop = {"reason": "reward hacking", "round": r, "evidence": alarm}
        elif health and cfg.on_unhealthy == "stop":
            stop = {"reason": "MPO health", "round": r, "evidence": health}
        reference = cfg.policy_name_or_path if cfg.reference == "initial" else policy
        return {**rec, "policy": str(mpo), "reference": reference, "mpo": history, "eval": metrics,
                "alarm": alarm, "health": health, "stop": stop, "seconds": time.perf_counter() - t0}  # fmt: skip

    # > the loop
    def run(self) -> dict:
        """Run or resume every round; return the result (also in `output_dir/result.json`)."""
        if self.cfg.report_to != "wandb":
            return self._run_all()
        saved = os.environ.get("WANDB_RUN_GROUP")
        os.environ["WANDB_RUN_GROUP"] = self.group  # the MPO stages log into the run's group (their own runs)
        try:
            return self._run_all()
        finally:
            os.environ.pop("WANDB_RUN_GROUP") if saved is None else os.environ.update(WANDB_RUN_GROUP=saved)

    def _run_all(self) -> dict:
        cfg = self.cfg
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        inputs = {name: _config_path(v) if name.endswith("_config") and v else v
                  for name in INPUTS for v in [getattr(cfg, name)]}  # fmt: skip
        pool = read_prompts(cfg.prompts, skipped=SkipLog())  # read and checked before the folder is claimed
        eval_prompts = list(read_prompts(cfg.eval_prompts, skipped=SkipLog()))
        served = [ServedRewardModel.of(cfg.reward_url)] if cfg.reward_url else []  # the model, not the URLs
        claim_output_dir(self.out, [cfg, *served], inputs, overwrite=cfg.overwrite_output_dir)
        self.log(f"rounds run in {self.out} ({cfg.num_rounds} rounds)")
        self.round_dir(0).mkdir(parents=True, exist_ok=True)
        records = {0: {"round": 0, "policy": cfg.policy_name_or_path,
                       "eval": self._eval(0, cfg.policy_name_or_path, eval_prompts)}}  # fmt: skip
        stop = None
        for r in range(1, cfg.num_rounds + 1):
            start = start_round(records, cfg.on_unhealthy)
            rec = self.record(r)
            if rec is not None:
                self.log(f"round {r}: already done")
            else:
                if start != r - 1:
                    self.log(f"round {r}: starts from round {start}'s policy: round {r - 1} is unhealthy "
                             "(on_unhealthy: rollback)")  # fmt: skip
                rec = self._round(r, pool, eval_prompts, start, records[start])
                write_text_atomic(self.round_dir(r) / "round.json", json.dumps(rec, indent=2))  # marks it done
                self.log(f"round {r}: done")
            records[r] = rec
            write_report(self.out, records)
            if rec.get("stop"):
                stop = rec["stop"]
                self.log(f"stopping after round {r}: {stop['reason']}")
                break
        return self._finish(records, stop)

    def _finish(self, records: dict[int, dict], stop: dict | None) -> dict:
        best = best_round(keepable(records, self.cfg.on_unhealthy))
        result = {"best_round": best, "policy": records[best]["policy"], "rounds_done": max(records),
                  "stopped": stop, "eval": records[best]["eval"],
                  "unhealthy_rounds": [r for r, rec in sorted(records.items()) if rec.get("health")]}  # fmt: skip
        write_text_atomic(self.out / "result.json", json.dumps(result, indent=2))
        write_report(self.out, records, result)
        self.log(f"result: round {best} ({records[best]['policy']})")
        if self.cfg.report_to == "wandb":
            self._log_wandb(records, result)
        return result

    def _log_wandb(self, records: dict[int, dict], result: dict) -> None:
        """One run of the group with every round's metrics (step = round), the report's plots and the result."""
        import wandb

        cfg = self.cfg
        with wandb_run(f"{self.group}-rounds", dataclasses.asdict(cfg), self.out, project=cfg.wandb_project,
                       group=self.group, job_type="rounds", reinit="finish_previous") as run:  # fmt: skip
            for r, rec in sorted(records.items()):
                scalars = {f"eval/{k}": v for k, v in rec["eval"].items() if isinstance(v, (int, float))}
                scalars.update(
                    {f"pairs/{k}": v for k, v in rec.get("stats", {}).items() if isinstance(v, (int, float))}
                )
                run.log({"round": r, **scalars}, step=r)
            run.log({name: wandb.Image(str(self.out / f"rounds_{name}.png")) for name in PLOTS})
            run.summary.update({"best_round": result["best_round"], "stopped": (result["stopped"] or {}).get("reason")})


def run_rounds(cfg: RoundsConfig, scorer: Scorer | None = None, heldout_scorer: Scorer | None = None) -> dict:
    """Run or resume the loop described by `cfg`; return `result.json`'s content (see `Rounds`)."""
    return Rounds(cfg, scorer, heldout_scorer).run()
