"""Deploying the embeddings application on Ray Serve, and serving it until the job is stopped."""

from __future__ import annotations

import logging
import os
import socket
import time

from bg2vec import console
from bg2vec.errors import Bg2VecError
from bg2vec.interrupts import stop_on_sigterm
from bg2vec.serving.config import ALIAS, ServeConfig
from bg2vec.serving.prepare import prepare
from bg2vec.storage import redact


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something on this machine listens on (bound as Serve's proxy binds it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise Bg2VecError(f"port={port} on {host} cannot be used ({e.strerror}): another server listens "
                              f"there; stop it or pass port= a free port") from None


def deploy(cfg: ServeConfig) -> str:
    """Start Serve on cfg.host:cfg.port (unless it runs already) and deploy the application there; returns
    the API's base URL, ending in /v1 (what OpenAI clients take as base_url)."""
    import ray
    from ray import serve

    from bg2vec.serving.app import application

    if not ray.is_initialized() and cfg.ray_address is None and "RAY_ADDRESS" not in os.environ:
        check_port_free(cfg.host, cfg.port)  # a local Ray's Serve would fail on it after half a minute
    model, gpus = prepare(cfg)
    if not console.verbose():
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's own Serve lines
    scaling = (f"{cfg.min_replicas}-{cfg.max_replicas} replicas (autoscaling, {cfg.target_ongoing_requests:g} "
               f"requests in flight each)" if cfg.autoscaling else f"{cfg.num_replicas} replica(s)")
    print(f"deploying {cfg.name} from {redact(cfg.model)}: {scaling} of {cfg.cpus_per_replica:g} CPU and {gpus:g} "
          f"GPU, batches of up to {cfg.max_batch_size} inputs ({cfg.batch_wait_timeout_s * 1000:g} ms wait)",
          flush=True)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    try:
        serve.run(application(cfg, model, gpus), name=cfg.name, route_prefix=cfg.route_prefix)
    except RuntimeError as e:  # a replica failed to start (Serve's message holds the replica's error)
        serve.delete(cfg.name)
        raise Bg2VecError(f"the application {cfg.name} failed to deploy: {e}") from None
    return f"http://{cfg.host}:{cfg.port}{cfg.path_prefix}/v1"


def serve_until_stopped(cfg: ServeConfig) -> str:
    """jobs/serve.py: deploy, then serve until SIGINT or SIGTERM (Ctrl-C, ``ray job stop``, a container
    stop); then remove the application (a local Ray this process started ends with it)."""
    from ray import serve

    url = deploy(cfg)
    # SIGTERM stops like Ctrl-C, cleaning up on the way out. Installed after Ray started: ray.init sets its
    # own handler (sys.exit) and Ray's core arms a 3 s abort on SIGTERM (abseil's failure signal handler),
    # which killed the job (SIGABRT) midway through Serve's shutdown; Python's handler replaces both.
    # Checked on ray 2.60.0 (_private/worker.py: init; ray-project/ray#64830).
    stop_on_sigterm()
    try:
        prefix = cfg.path_prefix
        aliases = f" (or {ALIAS})" if cfg.name != ALIAS else ""
        key = "; clients send Authorization: Bearer <api key>" if cfg.api_key or cfg.api_key_env else ""
        print(f"serving {cfg.name} at {url} (POST {prefix}/v1/embeddings, GET {prefix}/v1/models, "
              f"GET {prefix}/health) as model {cfg.name}{aliases}{key}; Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(cfg.name)  # other applications on a cluster keep running
    return f"stopped serving {cfg.name}"
