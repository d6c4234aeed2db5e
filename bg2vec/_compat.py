"""Version-specific facts about the libraries bg2vec builds on, kept in one place.

transformers: bidirectional attention uses the public ``is_causal`` config attribute / forward
keyword (huggingface/transformers#43705), first released in 5.2.0; checked on 5.2.0 and 5.24.0.
With ``is_causal=False`` the mask helpers build padding-only (bidirectional) masks, sliding-window
layers get symmetric windows, and the attention functions (eager, sdpa, flash-attention-2) stop
applying their causal flag. No transformers internals are copied or patched.

transformers renamed ``gradient_checkpointing_enable``: see :func:`enable_activation_checkpointing`.
DeepSpeed: see :func:`deepspeed_cpu_local_size` (checked on 0.19.8). Ray Train: see
:func:`worker_print` (checked on 2.60.0).
"""

from __future__ import annotations

import os
import sys

import transformers
from packaging.version import Version

from bg2vec.errors import Bg2VecError

TRANSFORMERS_MIN = "5.2.0"
TRANSFORMERS_CHECKED = ("5.2.0", "5.24.0")


def require_transformers() -> None:
    if Version(transformers.__version__) < Version(TRANSFORMERS_MIN):
        raise Bg2VecError(f"bg2vec needs transformers >= {TRANSFORMERS_MIN} for bidirectional attention "
                          f"(the is_causal switch), found {transformers.__version__}: pip install -U transformers")


def enable_activation_checkpointing(model, kwargs: dict) -> None:
    """Checkpoint each decoder layer's activations. transformers 5.24 calls this
    ``activation_checkpointing_enable(activation_checkpointing_kwargs=)`` and warns on the old
    ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=)``, which is all 5.2 has."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def deepspeed_cpu_local_size(local_world_size: int) -> None:
    """Tell DeepSpeed's CPU accelerator how many ranks share this node.

    Without LOCAL_SIZE (set by DeepSpeed's own launcher, not by Ray Train) its ``device_count()``
    runs ``numactl --hardware`` in a subprocess, and ZeRO-3 asks on every gradient reduction: a fork
    of the whole training process per step, which also resets Python's warning registry so that
    torch's deprecation warning for ``reduce_scatter_tensor`` was printed at every step. Checked on
    deepspeed 0.19.8 (accelerator/cpu_accelerator.py, runtime/zero/stage3.py)."""
    os.environ.setdefault("LOCAL_SIZE", str(local_world_size))


def worker_print(line: str) -> None:
    """Print one line from a Ray Train worker, once.

    Ray Train replaces ``print`` in its workers with a logger call that also tees to ``sys.stdout``
    when that is not ``sys.__stdout__``, which it never is in a Ray worker: every line reached the
    driver twice. Writing to the stream skips the patch. Checked on ray 2.60.0
    (train/v2/_internal/logging/patch_print.py)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
