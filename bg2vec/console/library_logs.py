"""Library chatter kept off the console, each item with the library version it was checked on.

Every item here only decides where a library's message goes (a log file instead of the console) or
drops one named message; none changes what the libraries do. Where an item reaches into a library's
private details, breaking on an upgrade shows the message again rather than failing, except
:func:`use_ray_data_logging_config` (a private import, which the job tests would catch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """Around our own peft calls (``get_peft_model``, ``PeftModel.from_pretrained``).

    peft's ``PeftModel.__init__`` reads ``model.is_gradient_checkpointing`` to decide whether to
    prepare the model for gradient checkpointing; transformers 5.24 deprecated that property for
    ``is_activation_checkpointing`` with a FutureWarning, so every model load printed a warning
    nobody using bg2vec can act on. Only that message is ignored, only inside the block. Checked on
    peft 0.21.2 (peft_model.py: ``getattr(model, "is_gradient_checkpointing", True)``) and
    transformers 5.24.0 (modeling_utils.py)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_lm_head_only_load_report(message: str) -> bool:
    """Whether ``message`` is transformers' LOAD REPORT whose every row is an UNEXPECTED ``lm_head`` key."""
    text = _ANSI.sub("", message)
    if "LOAD REPORT" not in text:
        return False
    rows = [[cell.strip() for cell in line.split("|")] for line in text.splitlines() if "|" in line]
    rows = [r for r in rows if len(r) >= 2 and r[0] != "Key"]  # the header; the ---+--- rule has no "|"
    return bool(rows) and all(r[0].startswith("lm_head.") and r[1] == "UNEXPECTED" for r in rows)


class _LmHeadOnlyReportFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not is_lm_head_only_load_report(record.getMessage())


@contextlib.contextmanager
def bare_model_from_causal_lm() -> Iterator[None]:
    """Around our own ``AutoModel.from_pretrained`` of a decoder whose checkpoint may be a ``*ForCausalLM``.

    An encoder is the bare decoder, so the checkpoint's LM head is left out by design; transformers
    5.x logs a LOAD REPORT table at WARNING for it (``lm_head.weight | UNEXPECTED``) at every load.
    Only a report of nothing but UNEXPECTED ``lm_head.*`` keys is dropped: one with missing or
    mismatched weights still shows. (The tiny bases bg2vec writes itself hold no LM head at all:
    bg2vec.training.loop saves the bare decoder.) Checked on transformers 5.24.0
    (utils/loading_report.py: log_state_dict_report, logger ``transformers.modeling_utils``)."""
    logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _LmHeadOnlyReportFilter()
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)


def ignore_deepspeed_collective_deprecations() -> None:
    """In a training worker: DeepSpeed's ZeRO-3 calls ``torch.distributed.all_gather_into_tensor``
    and ``reduce_scatter_tensor``, which torch deprecates with a FutureWarning (per process, from
    DeepSpeed's code, nothing a user can change). Those two messages only. Checked on deepspeed
    0.19.8 (comm/torch.py) and torch 2.13.0 (distributed/c10d_logger.py)."""
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
        category=FutureWarning)


def worker_print(line: str) -> None:
    """Print one line from a Ray Train worker, once.

    Ray Train replaces ``print`` in its workers with a logger call that also tees to ``sys.stdout``
    when that is not ``sys.__stdout__``, which it never is in a Ray worker: every line reached the
    driver twice. Writing to the stream skips the patch. Checked on ray 2.60.0
    (train/v2/_internal/logging/patch_print.py)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def ray_train_worker_console(level: int) -> None:
    """In a Ray Train worker: send log records below ``level`` to the worker's log file only.

    Ray Train configures a worker's root logger with a handler named "console" (the worker's stderr,
    which Ray forwards to the driver's console) next to one writing logs/train/ray-train-app-worker-*.log;
    its LoggingConfig level does not reach that handler, so every rank's "Reporting training result
    ... TrainingReport(...)" and "Checkpoint successfully created" INFO records, and the records a
    library's ``print`` becomes, reached the console. Raising the console handler's level keeps them
    in the file. (bg2vec's own lines use :func:`worker_print`.) Checked on ray 2.60.0
    (train/v2/_internal/logging/logging.py, patch_print.py)."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "console":
            handler.setLevel(level)


@contextlib.contextmanager
def library_prints_to_log(logger_name: str) -> Iterator[None]:
    """In a Ray Train worker, around a library call that ``print``s (DeepSpeed's "DeepSpeed
    deepspeed.ops.comm.deepspeed_shm_comm_op built successfully" in ``init_distributed``, on every rank).

    Ray Train turns ``print`` into a root-logger INFO record (see :func:`ray_train_worker_console`)
    but, because a Ray worker's ``sys.stdout`` is Ray's own wrapper and not
    ``sys.__stdout__``, also writes the line to stdout, which Ray forwards to the driver's console.
    Inside the block stdout is a sink: the record still reaches the log file; without the print patch
    (RAY_TRAIN_ENABLE_PRINT_PATCH=0) the lines are logged to ``logger_name`` at INFO instead. Checked on
    ray 2.60.0 (train/v2/_internal/logging/patch_print.py) and deepspeed 0.19.8 (comm/torch.py)."""
    import builtins
    import io

    patched = getattr(builtins.print, "__module__", "").endswith("patch_print")
    sink = io.StringIO() if patched else _LogWriter(logging.getLogger(logger_name))
    with contextlib.redirect_stdout(sink):
        yield


class _LogWriter:
    """A text stream whose complete lines become INFO records of ``logger``."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.pending = logger, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def actor_restarts_setting() -> Iterator[None]:
    """Around a ``map_batches`` given LOCAL_ACTOR_POOL_ARGS: Ray 2.60 deprecates ``**ray_remote_args``
    with a RayDeprecationWarning ("use the named remote parameters instead") but has no named
    parameter for ``max_restarts``, which its own actor-pool operator reads from exactly there.
    That message only, only inside the block. Checked on ray 2.60.0 (data/dataset.py:
    _warn_on_ray_remote_args)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        yield


_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


class _TokenAuthNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOKEN_AUTH_NOTICE)


def hide_token_auth_notice() -> None:
    """Drop the WARNING ``ray.init`` logs whenever it starts a local Ray: "Token authentication is
    enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out" (authentication stays on;
    the opposite warning, that it is *disabled*, still shows). Setting RAY_AUTH_MODE=token would
    silence it too, but only before ``import ray``: after it, the driver keeps the mode it read then
    and cannot talk to the cluster it starts. Checked on ray 2.60.0
    (_private/authentication/authentication_token_setup.py)."""
    logger = logging.getLogger(_TOKEN_AUTH_LOGGER)
    if not any(isinstance(f, _TokenAuthNoticeFilter) for f in logger.filters):
        logger.addFilter(_TokenAuthNoticeFilter())


WORKER_WARNINGS = "ignore:`ExecutionOptions.exclude_resources` is deprecated"
"""A Python warning filter (``PYTHONWARNINGS``) for a local Ray's workers: every training run's
DatasetManager actor builds Ray Train's default ingest options, which pass the DataContext's
``exclude_resources`` to a setter Ray Data now deprecates (a RayDeprecationWarning about a setting
the user never touched). That message only; the options stay Ray Train's. Checked on ray 2.60.0
(train/_internal/data_config.py: default_ingest_options)."""

RAY_DATA_LOGGING_CONFIG = "RAY_DATA_LOGGING_CONFIG"


class RayDataConsoleFilter(logging.Filter):
    """The console filter of bg2vec's Ray Data logging config (resources/ray_data_logging.yaml):
    drops Ray Data's advice to turn progress bars back on, which the training stage turns off on
    purpose (its loop reports progress). Ray Data builds its filters by class path, without
    arguments; it imports this module in its processes (a local Ray shares this environment)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled. To enable, set")


def use_ray_data_logging_config(path: str) -> None:
    """Make this process and the workers it starts log Ray Data's records as ``path`` says.

    ``RAY_DATA_LOGGING_CONFIG`` (documented by Ray Data) names a YAML logging config, read when
    ``ray.data`` is imported and whenever a worker switches to another dataset; a driver that has
    imported ray.data already applies it again with ``configure_logging``. Checked on ray 2.60.0
    (data/_internal/logging.py)."""
    os.environ[RAY_DATA_LOGGING_CONFIG] = path
    if "ray.data" in sys.modules:
        from ray.data._internal.logging import configure_logging

        configure_logging()
