"""Fail early, with the fix, when the Python environment cannot run the toolkit (`python -m common.env_check`)."""

from __future__ import annotations

import importlib.util
import sys


def check_environment() -> list[str]:
    """Problems with the installed packages, each with its fix; empty when all is well."""
    problems = []
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision  # noqa: F401
        except Exception as e:  # a CUDA torchvision beside a CPU torch fails with RuntimeError
            problems.append(
                f"torchvision is installed but does not import ({type(e).__name__}: {e}). It also breaks "
                "transformers' model imports. Fix: `pip uninstall -y torchvision` (the toolkit needs no torchvision)."
            )
    try:
        from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: F401
    except Exception as e:
        problems.append(f"transformers cannot import Qwen2.5-VL ({type(e).__name__}: {e})")
    return problems


if __name__ == "__main__":
    found = check_environment()
    for p in found:
        print(f"environment check failed: {p}", file=sys.stderr)
    import torch

    print(f"environment ok: torch {torch.__version__}" if not found else "", file=sys.stderr)
    sys.exit(1 if found else 0)
