"""Adapters that plug the VL reward model into RL trainers: TRL GRPO (`trl`), verl (`verl`). OpenRLHF needs none:
the server's `/get_reward` endpoint is its remote reward model API (docs/serving.md)."""
