"""Fixtures of the rounds tests: a tiny loop config."""

import pytest

MPO_YAML = """use_cpu: true
bf16: false
per_device_train_batch_size: 2
max_steps: 3
learning_rate: 1.0e-2
lr_scheduler_type: constant
max_length: 256
gradient_checkpointing: false
logging_steps: 1
save_strategy: steps
save_steps: 1
report_to: none
full_determinism: true
seed: 0
"""


@pytest.fixture(scope="module")
def rounds_args(tiny_vlm_path, tiny_reward_path, toy_data, tmp_path_factory):
    """Flags of a 2-round loop on the tiny model: 4 prompts x 2 samples per round, 3 MPO steps, 16 held-out prompts
    (`output_dir`: a fresh folder to be replaced by each test)."""
    tmp_path = tmp_path_factory.mktemp("rounds")
    mpo_yaml = tmp_path / "mpo.yaml"
    mpo_yaml.write_text(MPO_YAML)
    return {"policy_name_or_path": str(tiny_vlm_path), "reward_model_name_or_path": str(tiny_reward_path),
            "prompts": str(toy_data["prompts_train"]), "eval_prompts": str(toy_data["prompts_eval"]),
            "build_pairs_config": "recipes/configs/build_pairs_tiny.yaml", "mpo_config": str(mpo_yaml),
            "build_pairs_args": ["--num_samples", "2", "--max_new_tokens", "4", "--chunk_size", "2"],
            "num_rounds": 2, "prompts_per_round": 4, "selection": "reward", "eval_max_new_tokens": 6,
            "device": "cpu", "output_dir": str(tmp_path / "rounds")}  # fmt: skip
