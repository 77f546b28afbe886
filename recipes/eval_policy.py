"""Evaluate a policy VLM on policy benchmarks (MMStar, MMMU val, MathVista testmini, AI2D) from their hub layouts
(docs/evaluation.md, "Policy benchmarks").

    # tiny CPU run on fixtures in the hub layouts (written by the test helper)
    python tests/policy_eval/hub_fixtures.py outputs/policy-bench
    python recipes/eval_policy.py --config recipes/configs/eval_policy_tiny.yaml --model outputs/tiny-vlm \
        --data mmstar=outputs/policy-bench/MMStar mathvista_testmini=outputs/policy-bench/MathVista \
        --output_dir outputs/eval-policy-tiny

    # a 7B policy on one GPU, hub snapshots on disk
    python recipes/eval_policy.py --model outputs/mpo-round3 --backend vllm --dtype bfloat16 \
        --benchmarks mmstar,mmmu_val,mathvista_testmini,ai2d --data mmstar=data/MMStar mmmu_val=data/MMMU \
        mathvista_testmini=data/MathVista ai2d=data/ai2d --output_dir outputs/eval-policy-round3

Writes predictions.jsonl, metrics.json, results.md, categories.png, run_meta.json.
"""

from pathlib import Path

from common.cli import run_recipe
from policy_eval.evaluate import EvalPolicyConfig, evaluate_policy


def main(cfg: EvalPolicyConfig) -> None:
    cfg.validate()  # fail before reading data or loading the model
    evaluate_policy(cfg)
    print((Path(cfg.output_dir) / "results.md").read_text())


if __name__ == "__main__":
    run_recipe(main, [EvalPolicyConfig])
