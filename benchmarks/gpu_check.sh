#!/usr/bin/env bash
# The GPU check in one call: scoring, sampling and the MPO step at the real Qwen2.5-VL-7B shape (random weights,
# no network), ours against each baseline, all JSON under --output_dir. See benchmarks/gpu_check.py --help.
#   bash benchmarks/gpu_check.sh --output_dir outputs/gpu_check                            # one H100/H200, < 8 min
#   bash benchmarks/gpu_check.sh --preset small --device cpu --output_dir /tmp/gpu_check  # CPU, proves it runs
# PYTHON picks the interpreter (default: the project's .venv/bin/python that `make install` makes, else python on PATH).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
cd "$repo"
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python
  [[ -x "$repo/.venv/bin/python" ]] && PYTHON="$repo/.venv/bin/python"
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
