"""Saving trained LoRA weights as a peft adapter of the *bare* base model.

MNTP trains ``*ForCausalLM`` (it needs the LM head), SimCSE the bare model; an encoder loads the
bare model (``AutoModel``). The adapter is therefore keyed for the bare model in both stages
(``base_model.model.layers.0.self_attn.q_proj.lora_A.weight``), which peft, ``Bg2Vec`` and the
SimCSE stage all load directly. Under ZeRO-3 the weights are gathered from their shards first: a
sharded parameter read directly is an empty tensor, and an adapter of empty tensors is refused.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from bg2vec.errors import Bg2VecError
from bg2vec.training.config import LoraSettings

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def gathered_lora_state(peft_model) -> dict[str, torch.Tensor]:
    """The LoRA weights on CPU, whole, keyed for the bare base model. Collective under ZeRO-3:
    every rank must call it."""
    adapter = peft_model.active_adapter
    named = [(name, p) for name, p in peft_model.named_parameters() if "lora_" in name]
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for _, p in named):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for _, p in named])
    with gather:
        state = {bare_model_key(name, peft_model, adapter): p.detach().to("cpu", torch.float32, copy=True)
                 for name, p in named}
    empty = [k for k, v in state.items() if v.numel() == 0]
    if not state or empty:
        raise Bg2VecError(f"refusing to save an empty LoRA adapter ({len(state)} tensors, empty: {empty[:3]})")
    return state


def bare_model_key(name: str, peft_model, adapter: str) -> str:
    """``base_model.model.model.layers...lora_A.default.weight`` of a peft-wrapped ``*ForCausalLM``
    -> ``base_model.model.layers...lora_A.weight`` (the bare model's key, without the adapter name)."""
    name = name.replace(f".{adapter}.", ".")
    inner = peft_model.get_base_model()
    if inner.base_model is not inner:  # a *ForCausalLM: the decoder lives under .model
        name = name.replace(f"base_model.model.{inner.base_model_prefix}.", "base_model.model.", 1)
    return name


def save_adapter(state: dict[str, torch.Tensor], lora: LoraSettings, base_model: str, directory: Path,
                 dtype: torch.dtype = torch.float32) -> None:
    from peft import LoraConfig

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(directory / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
               bias="none", base_model_name_or_path=base_model).save_pretrained(str(directory))
