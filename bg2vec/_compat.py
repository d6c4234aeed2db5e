"""Version facts about the libraries bg2vec builds on that change what it does, kept in one place.

transformers: bidirectional attention uses the public ``is_causal`` config attribute / forward
keyword (huggingface/transformers#43705); bg2vec requires 5.24.0, the version it is tested on
(:func:`require_transformers`; its checkpointing API: :func:`enable_activation_checkpointing`).
With ``is_causal=False`` the mask helpers build padding-only (bidirectional) masks, sliding-window
layers get symmetric windows, and the attention functions (eager, sdpa, flash-attention-2) stop
applying their causal flag. No transformers internals are copied or patched.

DeepSpeed (checked on 0.19.8): :func:`deepspeed_cpu_local_size`, :func:`deepspeed_cpu_accelerator`,
:func:`remove_deepspeed_cpu_allreduce_buffer`.
Ray (checked on 2.60.0): :data:`LOCAL_RAY_ENV`, :data:`LOCAL_ACTOR_POOL_ARGS`.

What only keeps library chatter off the console lives in bg2vec.console.library_logs.
"""

from __future__ import annotations

import os

from packaging.version import Version

from bg2vec.errors import Bg2VecError

TRANSFORMERS_MIN = "5.24.0"  # the tested version (requirements/constraints.txt); pyproject's floor


def require_transformers() -> None:
    import transformers

    if Version(transformers.__version__) < Version(TRANSFORMERS_MIN):
        raise Bg2VecError(f"bg2vec needs transformers >= {TRANSFORMERS_MIN} (bidirectional attention through the "
                          f"is_causal switch, activation checkpointing), found {transformers.__version__}: "
                          f"pip install -U transformers")


def enable_activation_checkpointing(model, kwargs: dict) -> None:
    """Checkpoint each decoder layer's activations. transformers 5.24 calls this
    ``activation_checkpointing_enable(activation_checkpointing_kwargs=)`` and warns on the old
    ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=)``."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)


def deepspeed_cpu_local_size(local_world_size: int) -> None:
    """Tell DeepSpeed's CPU accelerator how many ranks share this node.

    Without LOCAL_SIZE (set by DeepSpeed's own launcher, not by Ray Train) its ``device_count()``
    runs ``numactl --hardware`` in a subprocess, and ZeRO-3 asks on every gradient reduction: a fork
    of the whole training process per step, which also resets Python's warning registry so that
    torch's deprecation warning for ``reduce_scatter_tensor`` was printed at every step. Checked on
    deepspeed 0.19.8 (accelerator/cpu_accelerator.py, runtime/zero/stage3.py)."""
    os.environ.setdefault("LOCAL_SIZE", str(local_world_size))


def deepspeed_cpu_accelerator() -> None:
    """Name DeepSpeed's accelerator on a CPU-only run: ``DS_ACCELERATOR=cpu``, its documented override.

    Without it DeepSpeed probes for every accelerator it knows and, finding none, warns "Setting
    accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it." on every
    worker. Read the first time DeepSpeed picks its accelerator (on ``import deepspeed``), so call
    this before. Checked on deepspeed 0.19.8 (accelerator/real_accelerator.py)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
"""Environment of a local Ray's workers. Ray Train starts a PreemptionWatcher actor per worker group,
which watches for nodes being drained (spot instances, autoscaler scale-down): on one machine that
never happens, and creating the actor logs Ray core's "Actor with class name: 'PreemptionWatcher' ...
has constructor arguments in the object store and max_restarts > 0" error line (ray-project/ray#53727)
in the TrainController, which Ray forwards to the console. Checked on ray 2.60.0
(train/v2/_internal/constants.py, callbacks/preemption_callback.py)."""

LOCAL_ACTOR_POOL_ARGS = {"max_restarts": 0}
"""Ray remote args for a Ray Data actor pool on a local Ray. Ray Data creates pool actors with
``max_restarts=-1`` and their function in the object store, so Ray core logs the same
"constructor arguments in the object store and max_restarts > 0" error line in the driver
(ray-project/ray#57733). On one machine an actor that died (out of memory, a crash) would only be
restarted into the same failure, so local pools do not restart (Ray Data documents
``map_batches(..., max_restarts=0)``); on a cluster, where a node can be lost, Ray's default
stays. Checked on ray 2.60.0 (data/_internal/execution/operators/actor_pool_map_operator.py)."""


def remove_deepspeed_cpu_allreduce_buffer(rank: int) -> None:
    """After a CPU run's last collective: remove this rank's shared-memory allreduce buffer.

    DeepSpeed's CPU communication op creates a 69 MB ``/dev/shm/deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_
    {MASTER_PORT}_{rank}`` per rank and never unlinks it, so every CPU training run left ~70 MB per worker
    in memory (14 GB on this project's test machine after a day of runs, which Ray's memory monitor counts
    and answered by killing workers); a later run on the same address and port would also map a stale
    buffer. The other ranks have it mapped by then, so removing the name frees it once they exit. Checked
    on deepspeed 0.19.8 (ops/csrc/cpu/comm/shm.cpp: shm_initialize, shared_close never called)."""
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if address and port:
        buffer = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}"
        if os.path.exists(buffer):
            os.unlink(buffer)
