"""Hyperparameter search (Ray Tune): the MNTP mask ratio and the SimCSE temperature (optionally learning
rates and dropout), each trial an MNTP then a SimCSE Ray Train run, ASHA stopping the weak ones early.
The objective is dev_score: continuation retrieval with the model's embeddings on held-out validation
blocks (bg2vec.training.dev_score), comparable across mask ratios as the validation loss is not.

    # the embedded default: 4 trials of a tiny random Mistral on CPU, after jobs/prepare_data.py
    python jobs/tune.py --config configs/tiny/tune.yaml data=runs/tiny/data output=runs/tiny/tune

    # BgGPT-7B on a GPU cluster: 8 trials of 8 GPUs each, as many at once as the cluster holds
    ray job submit --working-dir . -- python jobs/tune.py --config configs/bggpt-7b/tune.yaml \\
        data=s3://my-bucket/bg2vec/bgwiki output=s3://my-bucket/bg2vec/bggpt-7b/tune

    # the contrastive stage alone: its temperature and learning rate, from an MNTP output on a pairs directory
    python jobs/tune.py --config configs/tiny/tune_contrastive.yaml pairs=runs/tiny/pairs mntp=runs/tiny/mntp \\
        output=runs/tiny/tune-contrastive

Writes OUTPUT/best.json (the best trial's settings, dev_score, model directory and checkpoint),
OUTPUT/trials.md (every trial) and OUTPUT/trials.png (dev_score over the steps of every trial).
Running the same command again resumes an interrupted search (Tuner.restore).
"""

from bg2vec.cli import run_job
from bg2vec.storage import child, redact
from bg2vec.tuning.search import METRIC, TuneConfig


def main(cfg: TuneConfig) -> str:
    from bg2vec.tuning.search import run_search

    result = run_search(cfg)
    best, output = result["best"], result["output"]
    stopped = sum(r.status == "stopped" for r in result["records"])
    settings = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["config"].items())
    return "\n".join([
        f"search finished: {best['trials']} trials ({stopped} stopped early by ASHA); best {best['trial_id']}: "
        f"{METRIC} {best[METRIC]:.4f} with {settings}",
        f"  model:       {redact(best['model'])}   (Bg2Vec.from_pretrained)",
        f"  best:        {redact(child(output, 'best.json'))}",
        f"  trials:      {redact(child(output, 'trials.md'))}, {redact(child(output, 'trials.png'))}",
    ])


if __name__ == "__main__":
    run_job(TuneConfig, main, __doc__)
