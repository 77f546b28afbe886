"""A few supervised steps of the tiny Qwen2.5-VL under the deepspeed launcher: the harness the distributed tests use.

deepspeed --num_gpus 2 tests/scripts/ds_tiny_step.py MODEL DATA OUT zero2|zero3
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, Trainer, TrainingArguments

from common.distributed import init_distributed_early, shutdown
from common.io import read_records
from common.processor import load_processor

REPO = Path(__file__).resolve().parents[2]


def main(model_path: str, data_path: str, out_dir: str, zero: str) -> None:
    init_distributed_early()
    processor = load_processor(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()} if zero != "zero3" else None
    dataset = read_records(data_path)

    def collate(rows):
        texts = [processor.apply_chat_template(r["prompt"] + r["chosen"], tokenize=False) for r in rows]
        images = [r["images"] for r in rows]
        batch = processor(text=texts, images=images if any(images) else None, return_tensors="pt", padding=True)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch

    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, remove_unused_columns=False,
        deepspeed=str(REPO / "recipes" / "deepspeed" / f"{zero}.json"), seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"deepspeed": trainer.is_deepspeed_enabled, "world_size": args.world_size, "losses": losses}
    if before is not None:
        result["changed"] = sum(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
        result["n_params"] = len(before)
    if trainer.is_world_process_zero():
        Path(out_dir, "result.json").write_text(json.dumps(result))
    shutdown(trainer)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(*args)
