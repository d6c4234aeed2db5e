"""What a training job prints when it ends."""

from __future__ import annotations

from bg2vec.storage import redact


def summarize(result: dict) -> str:
    m = result["metrics"]
    shown = ", ".join(f"{k} {m[k]:.4g}" for k in ("loss", "accuracy", "val_loss", "val_accuracy", "dev_score",
                                                  "tokens_per_s")
                      if isinstance(m.get(k), float))
    return "\n".join([
        f"{result['stage']} finished: step {m.get('step')}, {m.get('samples')} samples; {shown}",
        f"  model:       {redact(result['output'])}   (Bg2Vec.from_pretrained)",
        f"  run:         {redact(result['run_dir'])}   (checkpoints, TensorBoard: tensorboard --logdir ...)",
    ])
