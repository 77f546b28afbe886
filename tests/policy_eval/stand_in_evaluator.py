"""A stand-in for an external evaluator (lmms-eval's command line and results layout), for the `eval_command` tests.

    python tests/policy_eval/stand_in_evaluator.py --model POLICY --output_path DIR [--fail]

Writes `DIR/<model folder name>/20261203_120000_results.json` shaped as lmms-eval's (`{"results": {task: {"alias",
"<metric>,<filter>": value, "<metric>_stderr,<filter>": "N/A"}}, "config": {...}}`) and, later, a samples file
without "results". The score is `score_of(POLICY)`: a fraction fixed by the policy folder's name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path


def score_of(model: str) -> float:
    return int(hashlib.sha256(Path(model).name.encode()).hexdigest()[:4], 16) / 0xFFFF


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_path", required=True)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args()
    if args.fail:
        print("CUDA out of memory (stand-in)", file=sys.stderr)
        sys.exit(3)
    if not Path(args.model).is_dir():
        sys.exit(f"no model folder {args.model}")
    out = Path(args.output_path) / Path(args.model).name
    out.mkdir(parents=True, exist_ok=True)
    score = score_of(args.model)
    results = {"results": {"mmstar": {"alias": "mmstar", "average,none": score, "average_stderr,none": "N/A"},
                           "ai2d": {"alias": "ai2d", "exact_match,flexible-extract": 1 - score}},
               "config": {"model": "stand_in", "model_args": f"pretrained={args.model}"}}  # fmt: skip
    (out / "20261203_120000_results.json").write_text(json.dumps(results))
    time.sleep(0.01)
    (out / "20261203_120000_samples_mmstar.json").write_text(json.dumps([{"doc_id": 0, "score": 1}]))


if __name__ == "__main__":
    main()
