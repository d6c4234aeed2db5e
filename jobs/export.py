"""Export a trained encoder as a sentence-transformers folder with a model card (loadable without bg2vec).

    # the demo's encoder (make demo); its evaluation beside it (runs/demo/eval/results.json) goes into the card
    python jobs/export.py --config configs/tiny/export.yaml model=runs/demo/contrastive output=runs/demo/export

    # a trained BgGPT encoder, bfloat16, uploaded to the Hub (token from HF_TOKEN or `hf auth login`)
    python jobs/export.py --config configs/bggpt-7b/export.yaml model=/mnt/models/bg2vec-7b \\
        output=/mnt/models/bg2vec-7b-st push_to_hub=my-org/bg2vec-7b

Then, in any Python without bg2vec: ``SentenceTransformer("runs/demo/export").encode(["текст"])``.
"""

from bg2vec.cli import run_job
from bg2vec.export.config import ExportConfig


def main(cfg: ExportConfig) -> str:
    import torch

    from bg2vec._compat import deepspeed_cpu_accelerator

    if not torch.cuda.is_available():
        deepspeed_cpu_accelerator()  # peft imports DeepSpeed, which would warn that it found no GPU
    from bg2vec.export.folder import export
    from bg2vec.interrupts import stop_on_sigterm

    stop_on_sigterm()  # ray job stop: the staged folder is removed as on Ctrl-C
    print(f"[export] merging {cfg.model}'s adapters into its base and writing {cfg.output}", flush=True)
    summary = export(cfg)
    check, results = summary["verification"], summary["results"]
    evaluation = (f"the evaluation in {results}" if cfg.results is not None
                  else f"the pipeline's evaluation beside the model, {results}" if results
                  else "no evaluation table (none beside the model; results= names an evaluation's results.json)")
    lines = [f"exported {cfg.output}: {' -> '.join(summary['modules'])}, {summary['pooling']} pooling, "
             f"dimension {summary['dimension']}, {summary['dtype']}",
             f"  check: sentence-transformers gives the encoder's embeddings (max difference "
             f"{check['max_abs_diff']:.1e}, {check['texts']} texts, padding {' and '.join(check['padding'])})",
             f"  model card: {cfg.output}/README.md, with {evaluation}"]
    if summary["prompts"]["query"]:
        lines.append(f"  queries: encode_query prepends {summary['prompts']['query']!r}")
    if summary["matryoshka_dims"]:
        lines.append(f"  Matryoshka dimensions {summary['matryoshka_dims']}: SentenceTransformer(..., truncate_dim=d)")
    if "hub_url" in summary:
        lines.append(f"  uploaded: {summary['hub_url']}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_job(ExportConfig, main, __doc__)
