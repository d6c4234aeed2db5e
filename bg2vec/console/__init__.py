"""What a job's console shows: bg2vec's own lines; the libraries' logs go to their log files.

A job prints what each stage does and where its outputs are, one line per logged training step
(rank 0), its warnings and errors. Ray, Ray Data, Ray Train, DeepSpeed and transformers log a lot
more at INFO (execution plans, resource requests, every rank's checkpoint reports, progress
blocks); those stay in Ray's session log folder: every worker's stdout/stderr
(``logs/worker-*.out|err``), Ray Data's ``logs/ray-data/``, Ray Train's ``logs/train/``. A local
Ray's folder is named on the console when it starts.

``--verbose`` on a job (or ``BG2VEC_VERBOSE=1``) prints everything as the libraries do. Warnings
and errors reach the console either way: only INFO records and progress bars are kept off it,
plus a few named notices (bg2vec.console.library_logs says which, and why).

Settings that Ray's workers need travel in the local Ray's ``runtime_env``
(:func:`local_worker_env`, used by bg2vec.ray_session.start_local_ray); on a cluster the driver
and bg2vec's own worker code are quiet, while Ray's processes log as the cluster's runtime
environment says (``ray job submit --runtime-env-json '{"env_vars": {...}}'`` can pass the same).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

VERBOSE_ENV = "BG2VEC_VERBOSE"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RAY_DATA_LOGGING = Path(__file__).parents[1] / "resources" / "ray_data_logging.yaml"


def verbose() -> bool:
    """Whether the libraries' own logs go to the console too (``BG2VEC_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def setup_console(verbose_flag: bool = False) -> None:
    """A job's console, set up once at its start (bg2vec.cli.run_job, jobs/pipeline.py).

    ``verbose_flag`` (``--verbose``) sets BG2VEC_VERBOSE=1 for this process and the local Ray's
    workers. bg2vec's loggers print INFO and up; other loggers warnings and up (everything when
    verbose)."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    if not sys.stdout.isatty():
        # the driver prints workers' lines behind a "(Worker pid=...)" prefix in ANSI colours unless
        # RAY_COLOR_PREFIX=0 (read at every print; checked on ray 2.60.0): none in a file or a pipe
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if verbose():
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(_StoryFormatter())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
        logging.getLogger("bg2vec").setLevel(logging.INFO)  # its records reach the root's handler
    quiet_driver()


class _StoryFormatter(logging.Formatter):
    """bg2vec's own INFO lines as plain sentences; warnings and errors with their level and origin."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno <= logging.INFO and record.name.startswith("bg2vec"):
            return record.getMessage()
        return f"{record.levelname} {record.name}: {super().format(record)}"


def quiet_driver() -> None:
    """The driver's share (idempotent): Ray Data's console at warnings, Ray's token-auth notice,
    transformers' progress bars when stderr is not a terminal (a file, a CI log)."""
    if verbose():
        return
    from bg2vec.console import library_logs

    library_logs.use_ray_data_logging_config(str(RAY_DATA_LOGGING))
    library_logs.hide_token_auth_notice()
    if not sys.stderr.isatty():
        _hf_progress_bars_off()


def quiet_worker(train_worker: bool = False) -> None:
    """bg2vec's code in a Ray worker (a training worker, an embedding actor), before it loads models:
    no progress bars (a worker's stderr is forwarded to the driver's console) and, in a Ray Train
    worker, its INFO records (Ray Train's own, and the libraries' prints) in its log file only.
    (A training run's workers follow the driver's ``--verbose``, which travels in their
    train_loop_config; other workers read BG2VEC_VERBOSE from their runtime environment.)"""
    if verbose():
        return
    _hf_progress_bars_off()
    if train_worker:
        from bg2vec.console.library_logs import ray_train_worker_console

        ray_train_worker_console(logging.WARNING)


def local_worker_env() -> dict[str, str]:
    """Environment variables for the workers of a local Ray (its ``runtime_env``)."""
    from bg2vec._compat import LOCAL_RAY_ENV
    from bg2vec.console.library_logs import RAY_DATA_LOGGING_CONFIG, WORKER_WARNINGS

    env = {**LOCAL_RAY_ENV, VERBOSE_ENV: "1" if verbose() else "0"}
    if not verbose():
        env[RAY_DATA_LOGGING_CONFIG] = str(RAY_DATA_LOGGING)
        env["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), WORKER_WARNINGS]))
    return env


def train_log_level() -> str:
    """Ray Train's own log level on the console (``ray.train.LoggingConfig``); its files keep everything."""
    return "INFO" if verbose() else "WARNING"


def _hf_progress_bars_off() -> None:
    """transformers' and huggingface_hub's progress bars (loading and writing weights, downloads) off.
    HF_HUB_DISABLE_PROGRESS_BARS is read when they are imported, so set it for later imports (without
    importing them here) and switch off those already imported."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
