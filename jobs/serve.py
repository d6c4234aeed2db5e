"""Serve an encoder with OpenAI's embeddings API on Ray Serve, until Ctrl-C (or SIGTERM, ray job stop).

    # the embedded default: the tiny pipeline's encoder on http://127.0.0.1:8000/v1 (CPU)
    python jobs/serve.py --config configs/tiny/serve.yaml model=runs/demo/simcse port=8000

    # then, from another shell
    curl -s http://127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' \\
        -d '{"model": "bg2vec", "input": ["София е столицата на България."]}'

    # a trained BgGPT encoder on a GPU cluster: one GPU per replica, autoscaling, a key from the environment
    ray job submit --working-dir . --runtime-env-json '{"env_vars": {"BG2VEC_API_KEY": "..."}}' -- \\
        python jobs/serve.py --config configs/bggpt-7b/serve.yaml model=/mnt/models/bg2vec-7b

Routes: POST /v1/embeddings (input: a string or a list of strings; model: the served name or "bg2vec";
encoding_format: float | base64; dimensions: truncate and renormalise), GET /v1/models, GET /health,
GET /stats (this replica's batch sizes). The same application without this script:
serve run bg2vec.serving.app:build model=DIR [config=FILE] [key=value ...].
"""

from bg2vec.cli import run_job
from bg2vec.serving.config import ServeConfig


def main(cfg: ServeConfig) -> str:
    from bg2vec.serving.launch import serve_until_stopped

    return serve_until_stopped(cfg)


if __name__ == "__main__":
    run_job(ServeConfig, main, __doc__)
