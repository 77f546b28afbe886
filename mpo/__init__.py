"""Mixed Preference Optimization of Qwen2.5-VL policies (see docs/mpo.md).

Entry points: `mpo.train.train_mpo(MPOConfig)`, `mpo.trainer.MPOTrainer`, `mpo.loss.mpo_loss`,
`mpo.ref_logps.attach_ref_logps`, `mpo.evaluate.evaluate_policy`. Nothing is imported here, so `mpo.loss` stays light.
"""
