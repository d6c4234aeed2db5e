"""Before a deployment: check the model, start or join Ray, and count the GPUs a replica gets.

Shared by ``jobs/serve.py`` (bg2vec.serving.launch) and ``serve run bg2vec.serving.app:build``."""

from __future__ import annotations

import os

from bg2vec import console
from bg2vec.errors import Bg2VecError
from bg2vec.modeling.encoder import CONFIG_NAME
from bg2vec.serving.config import ServeConfig
from bg2vec.storage import absolute, exists, join, missing_location, redact, resolve

SERVE_LOG_TO_STDERR = "RAY_SERVE_LOG_TO_STDERR"
"""Serve's controller, proxy and replicas log every deployment step and request (access log) to
stderr as well as to logs/serve/; Ray forwards their stderr to the driver's console. ``0`` keeps them
in the files (and sends a replica's prints there too). Read when a Serve process imports ray.serve, so
it has to be in a local Ray's environment before Ray starts. Checked on ray 2.60.0
(serve/_private/constants.py, logging_utils.py: configure_component_logger)."""


def prepare(cfg: ServeConfig) -> tuple[str, float]:
    """Check the model, start or join Ray; returns (the model as replicas address it, GPUs per replica)."""
    import ray

    from bg2vec.ray_session import init_ray

    if missing_location(cfg.model):
        raise Bg2VecError(f"model {redact(cfg.model)} does not exist; pass model= a trained bg2vec directory "
                          f"(e.g. runs/demo/simcse from make demo) or a base LLM's hub id")
    fs, path = resolve(cfg.model)
    if exists(fs, path) and not any(exists(fs, join(path, name)) for name in (CONFIG_NAME, "config.json")):
        raise Bg2VecError(f"model {redact(cfg.model)} is not an encoder (no {CONFIG_NAME} or config.json in it); pass "
                          f"model= a trained bg2vec directory (e.g. runs/demo/simcse) or a base LLM's folder")
    model = absolute(cfg.model) if exists(fs, path) else cfg.model  # replicas do not run in this directory
    cfg.resolve_api_key()  # a missing key variable stops the job before Ray starts
    if not console.verbose():
        os.environ.setdefault(SERVE_LOG_TO_STDERR, "0")
    init_ray(cfg.ray_address)
    gpus = cfg.gpus_per_replica
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
    return model, gpus
