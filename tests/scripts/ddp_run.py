"""Run by tests/recipes/test_multiprocess.py under `accelerate launch` (several processes): a short distillation, then
every process writes what it ended with, so the test can compare the replicas."""

import hashlib
import json
import os
import sys

import short_pass_pause  # noqa: F401  (the scripts folder is on sys.path: a stream's passes end without a 5 s pause)
import torch

from hf_distill.run.build import build_run
from hf_distill.run.config import parse_args


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def main() -> None:
    out = sys.argv[1]
    model_args, data_args, distill_args, training_args, kw = parse_args(sys.argv[2:])
    run = build_run(model_args, data_args, distill_args, training_args, kw)
    trainer = run.trainer
    train_metrics = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint).metrics
    metrics = trainer.evaluate()
    container = trainer.accelerator.unwrap_model(trainer.model)
    state = {k: digest(v) for k, v in container.state_dict().items()}
    rank = trainer.args.process_index
    if rank == 0:
        import safetensors.torch

        safetensors.torch.save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in container.state_dict().items()},
            os.path.join(out, "final_state.safetensors"),
        )
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "rank": rank,
                "world_size": trainer.args.world_size,
                "global_step": trainer.state.global_step,
                "teacher_wrapped": type(trainer.teacher).__name__,
                "model_wrapped": type(trainer.model_wrapped).__name__,
                "static_graph": getattr(trainer.model_wrapped, "static_graph", None),
                "state": state,
                "metrics": metrics,
                "train_metrics": train_metrics,
            },
            f,
        )


if __name__ == "__main__":
    main()
