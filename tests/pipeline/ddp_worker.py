"""Two-process CPU DDP fine-tuning (gloo); run as a script: ``python ddp_worker.py OUT_DIR``.

Lightning's DDP launcher re-runs this script for rank 1. Rank 0 writes ``OUT_DIR/result.json``.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from tiny import ArrayTaskDataModule, accuracy, task_info, write_tiny_config

    from pactmerge.pipeline.finetuner import Recipe
    from pactmerge.pipeline.heads import build_heads
    from pactmerge.pipeline.model import ModelSpec, load_model
    from pactmerge.pipeline.training import fit_individual, read_summary

    loaded = load_model(ModelSpec(config=str(write_tiny_config(out))))
    heads = build_heads(loaded, [task_info("digits")])
    dm = ArrayTaskDataModule("digits", batch_size=32, eval_batch_size=50, n_train=512, n_val=200)
    recipe = Recipe(lr=3e-3, weight_decay=0.0, warmup_steps=5, max_steps=30, ckpt_every_n_steps=10)
    state = fit_individual(loaded, heads, dm, recipe, ckpt_dir=out / "ckpt",
                           trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp",
                                           "enable_progress_bar": False})
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        loaded.encoder.load_state_dict(state)
        result = {
            "summary": read_summary(out / "ckpt"),
            "full_val_acc": accuracy(loaded.encoder, heads["digits"], dm.xv, dm.yv),
            "shard_val_acc": [accuracy(loaded.encoder, heads["digits"], dm.xv[r::2], dm.yv[r::2]) for r in (0, 1)],
            "ckpt_files": sorted(p.name for p in (out / "ckpt").rglob("*.ckpt")),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        }
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
