"""Building the model each training worker trains: base LLM, bidirectional, (merged MNTP), LoRA.

With ZeRO-3 a Hugging Face model is sharded while it loads (transformers' DeepSpeed integration
runs ``from_pretrained`` under ``deepspeed.zero.Init``), so no worker holds the whole model in
memory; every later write to a sharded weight (the MNTP merge, a new mask token) happens inside
``GatheredParameters`` one module at a time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from bg2vec._compat import enable_activation_checkpointing
from bg2vec.console.library_logs import bare_model_from_causal_lm, peft_quietly
from bg2vec.errors import Bg2VecError
from bg2vec.modeling import make_bidirectional, packaged
from bg2vec.modeling.tiny import tiny_config
from bg2vec.training.config import TINY_PREFIX, LoraSettings, ModelSettings


def torch_dtype(settings: ModelSettings, use_gpu: bool) -> torch.dtype:
    if settings.dtype == "auto":
        return torch.bfloat16 if use_gpu else torch.float32
    return getattr(torch, settings.dtype)


def flush_denormals() -> None:
    """Make this thread's CPU arithmetic treat subnormal floats (|x| < 1.2e-38) as zero.

    Subnormals (Adam's second moments of tiny gradients, for one) are handled in microcode, many
    times slower than normal floats: a plain fp32 loop on the tiny preset fell from about 9,000 to
    6,000 tokens/s within 300 steps, and stayed at 8,800 with them flushed. No fp32 training depends
    on values that small. The setting is per thread and torch's compute threads inherit it when they
    are created, so call this before the thread's first torch operation."""
    torch.set_flush_denormal(True)


def gather_for_write(weight: torch.Tensor):
    """A context in which ``weight`` is whole on every rank and rank 0's changes are kept."""
    if hasattr(weight, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([weight], modifier_rank=0)
    return contextlib.nullcontext()


def base_config(settings: ModelSettings, tokenizer, base_path: str | None = None):
    """The base's transformers config, without its weights (``tiny:<family>``: the one it is built from)."""
    from transformers import AutoConfig

    name = base_path or packaged.resolve(settings.name_or_path)
    if name.startswith(TINY_PREFIX):
        h = settings.tiny_hidden_size
        return tiny_config(name[len(TINY_PREFIX):], len(tokenizer), hidden_size=h, intermediate_size=2 * h,
                           num_hidden_layers=settings.tiny_layers, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    try:
        return AutoConfig.from_pretrained(name, revision=None if base_path else settings.revision,
                                          trust_remote_code=settings.trust_remote_code)
    except OSError as e:
        raise Bg2VecError(f"cannot load the base model's config from {name}: {e} "
                          f"(gated models need HF_TOKEN)") from None


def load_base(settings: ModelSettings, *, causal_lm: bool, tokenizer, dtype: torch.dtype, seed: int,
              base_path: str | None = None) -> nn.Module:
    """The base decoder: ``*ForCausalLM`` for MNTP (its LM head predicts the masked tokens), the bare
    model for SimCSE. ``tiny:<family>`` is built from ``seed`` (identical on every worker)."""
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if causal_lm else AutoModel
    name = base_path or packaged.resolve(settings.name_or_path)
    if name.startswith(TINY_PREFIX):
        torch.manual_seed(seed)
        return cls.from_config(base_config(settings, tokenizer, base_path), dtype=dtype,
                               attn_implementation=settings.attn_implementation)
    try:
        with contextlib.nullcontext() if causal_lm else bare_model_from_causal_lm():
            return cls.from_pretrained(name, revision=None if base_path else settings.revision, dtype=dtype,
                                       attn_implementation=settings.attn_implementation,
                                       trust_remote_code=settings.trust_remote_code)
    except OSError as e:
        raise Bg2VecError(f"cannot load the base model {name}: {e} (gated models need HF_TOKEN)") from None


def prepare_for_training(model: nn.Module, settings: ModelSettings) -> nn.Module:
    """Bidirectional attention, no KV cache, non-reentrant gradient checkpointing when asked.

    Non-reentrant checkpointing computes input gradients without every input requiring grad, so a
    frozen embedding layer under LoRA needs no ``enable_input_require_grads`` hook (the reentrant
    variant would silently give the adapters no gradient)."""
    make_bidirectional(model)
    model.config.use_cache = False
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model, {"use_reentrant": False})
    return model


def zero3_fetch_whole_layers(model: nn.Module) -> int:
    """Make ZeRO-3 gather and release each decoder layer's weights as one unit; returns the number of layers.

    DeepSpeed otherwise hooks every submodule (each projection, and each LoRA A/B/dropout inside it),
    and the per-module fetch/release bookkeeping in Python costs more than the math of a small model:
    on the tiny preset ZeRO-3 ran at 0.43x a plain PyTorch loop, 0.77x with whole layers (bench/
    train_throughput.py). One unit per layer is also the granularity FSDP shards at; the cost is one
    whole layer's weights gathered at a time (0.4 GiB in bf16 for a 7B layer)."""
    from deepspeed.utils import set_z3_leaf_modules
    from transformers.modeling_layers import GradientCheckpointingLayer  # the decoder layer of every family

    return len(set_z3_leaf_modules(model, [GradientCheckpointingLayer], raise_if_not_found=False))


def merge_adapter(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """Merge a saved LoRA adapter into ``model`` module by module (each weight gathered under ZeRO-3)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    with peft_quietly():
        peft_model = PeftModel.from_pretrained(model, adapter_dir)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            with gather_for_write(module.get_base_layer().weight):
                module.merge()
    return peft_model.unload()  # the merged base layers, without the LoRA wrappers


def add_lora(model: nn.Module, lora: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none")
    try:
        with peft_quietly():
            return get_peft_model(model, config)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise Bg2VecError(f"lora.target_modules: {e}") from None
