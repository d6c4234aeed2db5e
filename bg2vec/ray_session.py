"""Starting or joining Ray: a local Ray of our own with its dashboard, and actor pools fit for it."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import ray

from bg2vec import console
from bg2vec._compat import LOCAL_ACTOR_POOL_ARGS
from bg2vec.console.library_logs import actor_restarts_setting


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS, as set by ``ray job submit``), else start a local Ray."""
    if ray.is_initialized():
        return
    if address is None and "RAY_ADDRESS" not in os.environ:
        local = start_local_ray()
        shown = "" if console.verbose() else f" (--verbose or {console.VERBOSE_ENV}=1 prints them here too)"
        print(f"started a local Ray (dashboard: {local.dashboard}); Ray's, DeepSpeed's and transformers' logs: "
              f"{local.logs}{shown}", flush=True)
    else:
        console.quiet_driver()
        ray.init(address=address, logging_level=logging.WARNING)


@dataclass(frozen=True)
class LocalRay:
    dashboard: str
    """The dashboard's URL."""
    logs: str
    """The session's log folder: every worker's stdout/stderr, Ray Data's and Ray Train's logs."""


_local_gcs: str | None = None  # the GCS address of the Ray that start_local_ray started


def start_local_ray(**options) -> LocalRay:
    """A new Ray of our own on this machine (``address="local"``: never the cluster that ``ray start``
    may have left recorded in /tmp/ray), with its dashboard on a free port of 127.0.0.1.

    The dashboard serves the State API, through which Ray Train's placement-group cleaner checks
    once a second that a run's controller is alive. Without it the cleaner logs a warning at every
    check, or hangs in GCS retries until stopping it times out with a traceback at the end of the
    run; and when Tune ends a trial abruptly, the cleaner is what frees the trial's CPUs/GPUs.
    Workers address this Ray's dashboard explicitly (RAY_API_SERVER_ADDRESS): another Ray on the
    same machine would otherwise be taken for this one. Checked on ray 2.60.0
    (train/v2/_internal/execution/controller/placement_group_cleaner.py). The workers' environment
    also carries the console settings (bg2vec.console.local_worker_env)."""
    global _local_gcs
    console.quiet_driver()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                       runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": url, **console.local_worker_env()}},
                       logging_level=logging.WARNING, **options)
    _local_gcs = context.address_info["gcs_address"]
    return LocalRay(url, os.path.join(context.address_info["session_dir"], "logs"))


def map_with_actor_pool(ds, fn, **options):
    """``ds.map_batches(fn, **options)`` for an actor pool: no actor restarts on a local Ray
    (bg2vec._compat.LOCAL_ACTOR_POOL_ARGS), Ray's default elsewhere."""
    local = ray.is_initialized() and ray.get_runtime_context().gcs_address == _local_gcs
    if not local:
        return ds.map_batches(fn, **options)
    with actor_restarts_setting():
        return ds.map_batches(fn, **options, **LOCAL_ACTOR_POOL_ARGS)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
