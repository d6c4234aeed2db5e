"""The planner (bg2vec.planning, jobs/plan.py) against numbers worked out by hand, against the
parameter counts of real transformers/peft models, against what autograd really keeps, and with
DeepSpeed's own estimator."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from bg2vec.config import field_docs, load_config
from bg2vec.errors import ConfigError
from bg2vec.modeling.tiny import tiny_config
from bg2vec.planning import (
    GIB,
    LORA_TARGETS,
    PRESETS,
    Architecture,
    PlanConfig,
    architecture_of,
    base_params,
    choose_zero_stage,
    flops_per_token,
    gpu_of_device,
    layer_activation_bytes_per_token,
    load_architecture,
    lora_params,
    memory,
    plan,
    render,
    transformers_config,
)
from conftest import REPO

BGGPT_7B = 7_290_884_096  # see test_mistral_7b_parameters_by_hand
BGGPT_7B_LORA = 41_943_040  # see test_lora_parameters_by_hand


def test_mistral_7b_parameters_by_hand():
    # embeddings 32,000 x 4,096 = 131,072,000, and the untied LM head the same
    # one layer: q, o 4,096 x 4,096 = 16,777,216 each; k, v 4,096 x 1,024 (8 kv heads x 128) = 4,194,304 each
    #            gate, up, down 4,096 x 14,336 = 58,720,256 each; 2 RMSNorms 2 x 4,096
    #            = 33,554,432 + 8,388,608 + 176,160,768 + 8,192 = 218,112,000
    # 32 layers 6,979,584,000 + embeddings and head 262,144,000 + final norm 4,096 = 7,241,732,096
    assert base_params(PRESETS["mistral-7b"]) == 7_241_732_096
    # BgGPT-7B added 6,000 tokens: + 2 x 6,000 x 4,096 = 49,152,000
    assert base_params(PRESETS["bggpt-7b"]) == 7_241_732_096 + 49_152_000 == BGGPT_7B
    # SimCSE loads the bare model: no LM head (38,000 x 4,096 = 155,648,000)
    assert base_params(PRESETS["bggpt-7b"], lm_head=False) == BGGPT_7B - 155_648_000


def test_gemma2_parameters_by_hand():
    # 9B: embeddings (tied with the head) 256,000 x 3,584 = 917,504,000
    # one layer: q 3,584 x 4,096 (16 heads x 256) = 14,680,064, k and v 3,584 x 2,048 = 7,340,032 each,
    #            o 14,680,064; MLP 3 x 3,584 x 14,336 = 154,140,672; 4 norms 14,336 -> 198,195,200
    # 42 layers 8,324,198,400 + 917,504,000 + final norm 3,584 = 9,241,705,984
    assert base_params(PRESETS["bggpt-gemma2-9b"]) == 9_241_705_984
    # 2.6B: 256,000 x 2,304 = 589,824,000; one layer: q and o 2 x 2,304 x 2,048, k and v 2 x 2,304 x 1,024,
    # MLP 3 x 2,304 x 9,216, 4 norms 9,216 -> 77,865,984; x 26 = 2,024,515,584 (+ 2,304 final norm)
    assert base_params(PRESETS["bggpt-gemma2-2.6b"]) == 2_614_341_888


def test_lora_parameters_by_hand():
    # r x (in + out) per adapted projection, r = 16:
    # q, o 16 x (4,096 + 4,096) = 131,072 each; k, v 16 x (4,096 + 1,024) = 81,920 each;
    # gate, up, down 16 x (4,096 + 14,336) = 294,912 each -> 1,310,720 per layer, x 32 layers
    assert lora_params(PRESETS["mistral-7b"], 16, list(LORA_TARGETS)) == 41_943_040 == BGGPT_7B_LORA
    # r = 8 on q and v only: 8 x (8,192 + 5,120) x 32 = 3,407,872
    assert lora_params(PRESETS["bggpt-7b"], 8, ["q_proj", "v_proj"]) == 3_407_872


@pytest.mark.parametrize("family", ["mistral", "llama", "qwen2", "qwen3", "gemma2", "gemma3_text"])
def test_counts_equal_transformers_and_peft_on_tiny_models(family):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    config = tiny_config(family, vocab_size=101)
    arch = architecture_of(config)
    model = AutoModelForCausalLM.from_config(config)
    assert base_params(arch) == sum(p.numel() for p in model.parameters())
    assert base_params(arch, lm_head=False) == sum(p.numel() for p in AutoModel.from_config(config).parameters())
    targets = ["q_proj", "v_proj", "down_proj"] if family == "llama" else list(LORA_TARGETS)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    assert lora_params(arch, 4, targets) == peft_model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("name", ["bggpt-7b", "bggpt-gemma2-9b", "bggpt-gemma2-2.6b"])
def test_presets_equal_full_size_transformers_models(name):
    """The built-in shapes, built by transformers on the meta device (no memory, no weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    arch = PRESETS[name]
    config = transformers_config(arch)
    assert architecture_of(config) == arch
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert base_params(arch) == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules=list(LORA_TARGETS)))
    assert lora_params(arch, 16, list(LORA_TARGETS)) == peft_model.get_nb_trainable_parameters()[0]


def test_local_config_json_and_hub_ids(tmp_path):
    config = tiny_config("qwen3", vocab_size=101)
    config.save_pretrained(tmp_path)
    assert load_architecture(str(tmp_path)) == architecture_of(config)
    assert load_architecture(str(tmp_path / "config.json")) == architecture_of(config)
    assert load_architecture("INSAIT-Institute/BgGPT-7B-Instruct-v0.2") == PRESETS["bggpt-7b"]
    assert load_architecture("insait-institute/bggpt-gemma-2-9b-it-v1.0") == PRESETS["bggpt-gemma2-9b"]
    assert plan(PlanConfig(model=str(tmp_path), gpus_per_node=1)).params == base_params(architecture_of(config))


def test_zero3_memory_by_hand():
    cfg = PlanConfig(model="bggpt-7b", seq_len=512, global_batch_size=32, gpus_per_node=8, zero_stage=3,
                     lora_rank=16, lora_dropout=0.05, overhead_gib=2.0)
    mem = memory(cfg, PRESETS["bggpt-7b"])
    assert mem.frozen_weights == 2 * BGGPT_7B // 8 == 1_822_721_024  # bf16, sharded over 8 GPUs
    # one decoder layer (218,103,808 in projections + 2 x 4,096 norms = 218,112,000, more than the
    # 38,000 x 4,096 embedding) gathered whole + DeepSpeed's 5e7-parameter prefetch bucket, bf16
    assert mem.gathered_weights == 2 * (218_112_000 + 50_000_000) == 536_224_000
    assert mem.lora_weights == 2 * BGGPT_7B_LORA // 8
    assert mem.gradients == 6 * BGGPT_7B_LORA // 8  # bf16 + fp32
    assert mem.optimizer == 12 * BGGPT_7B_LORA // 8  # fp32 master + 2 moments
    # micro-batch 32 / 8 = 4 rows x 512 = 2,048 tokens
    # checkpoints: 32 layer inputs x 2 B x 4,096 x 2,048 = 536,870,912
    # one layer, per token: 2 norms' fp32 copies 2 x 4 x 4,096 = 32,768; MLP 3 x 2 x 14,336 = 86,016;
    #   SDPA q, k, v, out 2 x (2 x 4,096 + 2 x 1,024) = 20,480; LoRA A outputs 7 x 2 x 16 = 224;
    #   LoRA dropout output + mask (2 + 1) x (q, k, v, gate, up: 5 x 4,096, o: 4,096, down: 14,336) = 116,736
    #   = 256,224 B per token
    assert mem.activations == 536_870_912 + 256_224 * 2_048
    # final norm's fp32 copy 4 x 4,096 B per token; MNTP scores int(0.2 x 2,048) = 409 rows: their hidden
    # states and input gradients 2 x 2 x 4,096 B each, and one chunk (all 409 <= 1,024) of 38,000 logits x 12 B
    head = 16_384 * 2_048 + 409 * 16_384 + 409 * 38_000 * 12
    assert mem.head == head == 226_759_488
    assert mem.overhead == 2 * GIB
    assert mem.total == (1_822_721_024 + 536_224_000 + 20 * BGGPT_7B_LORA // 8 + 536_870_912
                         + 256_224 * 2_048 + head + 2 * GIB)


@pytest.mark.parametrize("stage, sharded", [
    (0, set()), (1, {"optimizer"}), (2, {"optimizer", "gradients"}),
    (3, {"optimizer", "gradients", "lora_weights", "frozen_weights"})])
def test_zero_stages_shard_what_they_should(stage, sharded):
    arch = PRESETS["bggpt-7b"]
    one = memory(PlanConfig(zero_stage=stage, gpus_per_node=1, global_batch_size=4), arch)
    eight = memory(PlanConfig(zero_stage=stage, gpus_per_node=8, global_batch_size=32), arch)
    for part in ("frozen_weights", "lora_weights", "gradients", "optimizer"):
        expected = getattr(one, part) // 8 if part in sharded else getattr(one, part)
        assert getattr(eight, part) == expected, part
    assert (eight.gathered_weights > 0) == (stage == 3)
    assert eight.activations == one.activations  # same micro-batch (4) per GPU


def test_small_shape_activations_by_hand():
    arch = Architecture("mistral", 1000, 256, 704, 2, 8, 2, 64, tie_word_embeddings=False)
    cfg = PlanConfig(seq_len=64, global_batch_size=2, gpus_per_node=1, lora_rank=8, lora_dropout=0.0)
    # norms 2 x 4 x 256 = 2,048; MLP 3 x 2 x 704 = 4,224; SDPA 2 x (2 x 512 + 2 x 128) = 2,560;
    # inputs the adapters read: attention 2 x 256, MLP 2 x 256, down_proj 2 x 704 -> 2,432;
    # LoRA A outputs 7 x 2 x 8 = 112 -> 11,376 B per token
    assert layer_activation_bytes_per_token(arch, cfg) == 11_376
    # eager instead of SDPA: q, expanded k and v 3 x 2 x 512 = 3,072, o_proj's input 2 x 512 = 1,024,
    # 8 heads x 64 keys x (4 B fp32 softmax + 2 B its cast) = 3,072 -> 11,376 - 2,560 + 7,168 = 15,984
    eager = dataclasses.replace(cfg, attn_implementation="eager")
    assert layer_activation_bytes_per_token(arch, eager) == 15_984
    # LoRA on q and v only: the MLP and down_proj inputs are not kept -> 11,376 - 512 - 1,408 - 5 x 16 = 9,376
    assert layer_activation_bytes_per_token(arch, dataclasses.replace(cfg, lora_target_modules=["q_proj", "v_proj"])) \
        == 9_376
    # 2 rows x 64 tokens = 128 tokens; checkpointing keeps 2 layer inputs (2 x 2 B x 256 x 128) + 1 layer
    mem = memory(cfg, arch)
    assert mem.activations == 2 * 2 * 256 * 128 + 11_376 * 128
    no_ckpt = memory(dataclasses.replace(cfg, gradient_checkpointing=False), arch)
    assert no_ckpt.activations == 2 * 11_376 * 128
    # SimCSE: both views in one pass, twice the rows; no logits, only the final norm (4 x 256 per token)
    simcse = memory(dataclasses.replace(cfg, stage="simcse"), arch)
    assert simcse.activations == 2 * mem.activations and simcse.head == 2 * 128 * 4 * 256


def _saved_bytes(model, ids) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids)
    return sum(n for ptr, n in kept.items() if ptr not in weights)


QV = ["q_proj", "v_proj"]


@pytest.mark.parametrize("family, attn, targets, lora_dropout", [
    ("mistral", "sdpa", LORA_TARGETS, 0.0), ("mistral", "eager", LORA_TARGETS, 0.0),
    ("gemma2", "eager", LORA_TARGETS, 0.0), ("qwen3", "sdpa", LORA_TARGETS, 0.0), ("mistral", "sdpa", QV, 0.0),
    ("mistral", "sdpa", LORA_TARGETS, 0.1), ("gemma2", "eager", ["o_proj", "down_proj"], 0.1)])
def test_activation_formula_matches_what_autograd_keeps(family, attn, targets, lora_dropout):
    """One LoRA-wrapped decoder layer's saved tensors in bf16 (a 2-layer model minus a 1-layer one)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    rows, seq, targets = 2, 64, list(targets)
    sizes = dict(hidden_size=256, intermediate_size=704, num_attention_heads=8, num_key_value_heads=2, head_dim=64)
    measured = []
    for layers in (1, 2):
        torch.manual_seed(0)
        config = tiny_config(family, vocab_size=101, num_hidden_layers=layers, **sizes)
        model = AutoModel.from_config(config, attn_implementation=attn)
        model = get_peft_model(model, LoraConfig(r=8, lora_dropout=lora_dropout, target_modules=targets))
        model = model.to(torch.bfloat16).train()  # DeepSpeed's bf16 mode casts the adapters too
        measured.append(_saved_bytes(model, torch.randint(0, 101, (rows, seq))))
    cfg = PlanConfig(seq_len=seq, attn_implementation=attn, lora_rank=8, lora_dropout=lora_dropout,
                     lora_target_modules=targets)
    arch = architecture_of(config)
    expected = layer_activation_bytes_per_token(arch, cfg) * rows * seq
    if lora_dropout > 0:
        # on CPU, dropout keeps its mask in the input dtype (2 B); CUDA's fused dropout keeps a bool (1 B)
        expected += sum(arch.linear_shapes()[t][0] for t in targets) * rows * seq
    # left out of the formula: RMSNorm's 1/rms per token, SDPA's logsumexp, Gemma's (1 + weight) copies
    assert measured[1] - measured[0] == pytest.approx(expected, rel=0.01)


def test_flops_and_time_by_hand():
    cfg = PlanConfig(model="bggpt-7b", seq_len=512, global_batch_size=32, max_steps=1000, gpu="A100-80GB",
                     gpus_per_node=8, mfu=0.35, price_per_gpu_hour=2.0)
    # W = 32 x (2 x 4,096^2 + 2 x 4,096 x 1,024 + 3 x 4,096 x 14,336) = 32 x 218,103,808 = 6,979,321,856
    # H = LM head 38,000 x 4,096 at the masked 20% of positions only = 31,129,600;
    # A = 4 x 32 layers x 512 x 4,096 = 268,435,456; P = 41,943,040
    # forward 2(W + H) + A + 2P, input-grad backward 2(W + H) + 2A + 4P, recompute 2W + A + 2P
    # = 4 x 7,010,451,456 + 2 x 6,979,321,856 + 4 x 268,435,456 + 8 x 41,943,040
    # = 28,041,805,824 + 13,958,643,712 + 1,073,741,824 + 335,544,320 = 43,409,735,680
    per_token = 43_409_735_680
    assert flops_per_token(cfg, PRESETS["bggpt-7b"]) == per_token
    p = plan(cfg)
    assert p.tokens == 32 * 512 * 1000 == 16_384_000
    assert p.flops == per_token * 16_384_000 == 711_225_109_381_120_000
    # 8 GPUs x 312e12 x 0.35 = 8.736e14 FLOP/s -> 814.13 s
    assert p.seconds == pytest.approx(711_225_109_381_120_000 / 8.736e14) == pytest.approx(814.131, abs=1e-3)
    assert p.tokens_per_second_per_gpu == pytest.approx(312e12 * 0.35 / per_token) == pytest.approx(2515.6, abs=0.1)
    assert p.cost == pytest.approx(814.131 / 3600 * 8 * 2.0, abs=1e-3)  # 3.62
    # the full logits (every position, mask_ratio 1) would add 4 x 0.8 x 155,648,000 FLOPs per token
    full = dataclasses.replace(cfg, mask_ratio=1.0)
    assert flops_per_token(full, PRESETS["bggpt-7b"]) == per_token + 4 * 124_518_400
    # SimCSE at 128 tokens: no LM head, two views per text -> twice the tokens
    # A = 4 x 32 x 128 x 4,096 = 67,108,864; 6W + 4A + 8P = 41,875,931,136 + 268,435,456 + 335,544,320
    simcse = dataclasses.replace(cfg, stage="simcse", seq_len=128, global_batch_size=128)
    assert flops_per_token(simcse, PRESETS["bggpt-7b"]) == 42_479_910_912
    assert plan(simcse).tokens == 2 * 128 * 128 * 1000
    # without checkpointing there is no recompute: 4(W + H) + 3A + 6P
    no_ckpt = dataclasses.replace(cfg, gradient_checkpointing=False)
    assert flops_per_token(no_ckpt, PRESETS["bggpt-7b"]) == 28_041_805_824 + 3 * 268_435_456 + 6 * 41_943_040


def test_deepspeed_estimator_is_called_and_shown(monkeypatch):
    import deepspeed.runtime.zero.stage3 as stage3
    import deepspeed.runtime.zero.stage_1_and_2 as stage12

    calls = []
    real3, real2 = stage3.estimate_zero3_model_states_mem_needs, stage12.estimate_zero2_model_states_mem_needs
    monkeypatch.setattr(stage3, "estimate_zero3_model_states_mem_needs",
                        lambda *a, **k: calls.append(a) or real3(*a, **k))
    monkeypatch.setattr(stage12, "estimate_zero2_model_states_mem_needs",
                        lambda *a, **k: calls.append(a) or real2(*a, **k))
    p = plan(PlanConfig(model="bggpt-7b", zero_stage=3, gpus_per_node=8))
    assert calls == [(BGGPT_7B, 218_112_000, 8, 1)]
    # DeepSpeed's ZeRO-3 formula without offload: 4 B x largest layer + 18 B x every parameter / GPUs
    expected = 4 * 218_112_000 + int(18 * BGGPT_7B / 8)
    assert p.deepspeed == ("estimate_zero3_model_states_mem_needs", expected)
    text = render(p)
    assert "estimate_zero3_model_states_mem_needs" in text and f"{expected / GIB:.2f}" in text  # 16.09
    p2 = plan(PlanConfig(model="bggpt-7b", zero_stage=2, gpus_per_node=8))
    assert p2.deepspeed == ("estimate_zero2_model_states_mem_needs", 2 * BGGPT_7B + int(18 * BGGPT_7B / 8))
    assert plan(PlanConfig(model="bggpt-7b", zero_stage=0, gpus_per_node=8)).deepspeed is None


def test_seven_b_without_zero_on_one_24gb_gpu_does_not_fit():
    p = plan(PlanConfig(model="bggpt-7b", zero_stage=0, gpu="L4-24GB", gpus_per_node=1, global_batch_size=32))
    assert not p.fits
    assert p.memory.frozen_weights == 2 * BGGPT_7B  # 13.6 GiB of bf16 weights alone
    text = render(p)
    assert "DOES NOT FIT" in text and "WILL NOT FIT" in text
    assert "micro_batch_size=" in p.warnings[0]  # what to change, with the memory it would need


def test_seven_b_zero3_on_8_a100_80gb_fits_without_warnings():
    p = plan(PlanConfig(model="bggpt-7b", zero_stage=3, gpu="A100-80GB", gpus_per_node=8, global_batch_size=32))
    assert p.fits and p.warnings == []
    assert "fits" in render(p) and "WARNING" not in render(p)


def test_small_micro_batches_under_zero3_are_host_bound():
    # 8 H100s at the preset's batch of 32: 4 blocks each, 0.26 s of GPU work against 32 x 28 ms of host time
    eight = plan(PlanConfig(model="bggpt-7b", gpu="H100-80GB", gpus_per_node=8, zero_stage=3))
    gpu_seconds = 4 * 512 * eight.flops_per_token / (989e12 * 0.35)
    assert gpu_seconds == pytest.approx(0.26, abs=0.005)
    [warning] = eight.warnings
    assert warning.startswith("host-bound: a micro-batch of 4 x 512 tokens is about 0.26 s of H100-80GB work")
    assert f"expect about {gpu_seconds / (32 * 0.028):.0%} of the tokens/s" in warning
    assert "WARNING: host-bound" in render(eight)
    # 2 H100s (16 blocks each), ZeRO-2 and the slower A100 give the GPU enough work, or gather nothing
    for cfg in (PlanConfig(gpu="H100-80GB", gpus_per_node=2, zero_stage=3), PlanConfig(gpu="H100-80GB", zero_stage=2),
                PlanConfig(gpu="A100-80GB", gpus_per_node=8, zero_stage=3)):
        assert plan(cfg).warnings == [], cfg


def test_auto_zero_stage_replicates_the_base_only_where_it_fits():
    # the 7B preset on 8 H100s: 13.6 GiB of bf16 weights per GPU fit easily, so plain data parallelism (ZeRO-0)
    # and no host-bound warning
    auto = plan(PlanConfig(model="bggpt-7b", gpu="H100-80GB", gpus_per_node=8))
    assert auto.config.zero_stage == 0 and auto.warnings == []
    assert auto.zero_choice == (f"the replicated weights fit ({auto.memory.total / GIB:.1f} of "
                                f"{auto.gpu.memory_gib:.1f} GiB), so plain data parallelism: nothing sharded, no "
                                f"ZeRO hooks")
    assert auto.memory == memory(PlanConfig(model="bggpt-7b", gpu="H100-80GB", gpus_per_node=8, zero_stage=0),
                                 PRESETS["bggpt-7b"])
    assert "ZeRO-0 (auto: the replicated weights fit" in render(auto)
    # Gemma-2-9B on 24 GB GPUs: 17.2 GiB of weights + 2 GiB overhead + activations exceed 85% of 24 GiB
    gemma = plan(PlanConfig(model="bggpt-gemma2-9b", gpu="A10G-24GB", gpus_per_node=8, attn_implementation="eager",
                            micro_batch_size=1))
    assert gemma.config.zero_stage == 3 and gemma.zero_choice.startswith("replicated, the weights would not fit")
    assert gemma.fits
    # the thresholds, at 85% of the memory: ZeRO-0 while the replicated run fits, ZeRO-2 while it fits with the
    # adapters' gradients and Adam states sharded (a rank-512 LoRA makes them weigh), ZeRO-3 one byte beyond
    cfg = PlanConfig(model="bggpt-7b", gpus_per_node=8, lora_rank=512)
    plain, sharded = (memory(dataclasses.replace(cfg, zero_stage=s), PRESETS["bggpt-7b"]).total for s in (0, 2))
    assert plain - sharded > GIB
    assert choose_zero_stage(cfg, PRESETS["bggpt-7b"], math.ceil(plain / 0.85))[0] == 0
    assert choose_zero_stage(cfg, PRESETS["bggpt-7b"], math.floor(plain / 0.85) - 1)[0] == 2
    assert choose_zero_stage(cfg, PRESETS["bggpt-7b"], math.ceil(sharded / 0.85))[0] == 2
    assert choose_zero_stage(cfg, PRESETS["bggpt-7b"], math.floor(sharded / 0.85) - 1)[0] == 3
    # a stage given is kept
    assert plan(PlanConfig(model="bggpt-7b", gpu="H100-80GB", zero_stage=3)).zero_choice is None

def test_other_warnings():
    odd = plan(PlanConfig(global_batch_size=30, gpus_per_node=8, micro_batch_size=2))
    assert any("not a multiple of micro_batch_size" in w for w in odd.warnings)
    gemma_sdpa = plan(PlanConfig(model="bggpt-gemma2-2.6b", attn_implementation="sdpa"))
    assert any("eager" in w for w in gemma_sdpa.warnings)


@pytest.mark.parametrize("overrides, message", [
    (["gpu=B300"], "gpu='B300' is not a known GPU type"),
    (["model=/nonexistent/config.json"], "model='/nonexistent/config.json' is neither a built-in shape"),
    (["model=some-org/unknown-model"], "give the path of the model's config.json"),
    (["zero_stage=5"], "zero_stage must be one of 'auto', 0, 1, 2, 3"),
    (["mfu=0"], "mfu must be in (0, 1]"),
    (["seq_len=0"], "seq_len must be >= 1"),
    (["lora_target_modules=[q_proj, lm_head]"], "lora_target_modules="),
    (["stage=pretrain"], "stage must be one of 'mntp', 'simcse'"),
])
def test_bad_input_is_named(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(PlanConfig, None, overrides)
    assert message in str(e.value)


def test_unreadable_or_foreign_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        plan(PlanConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="model_type 'bert' is not a decoder bg2vec trains"):
        plan(PlanConfig(model=str(tmp_path)))


def test_every_key_is_documented():
    assert set(field_docs(PlanConfig)) == {f.name for f in dataclasses.fields(PlanConfig)}


def _job(*args):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "plan.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_plan_job_end_to_end():
    done = _job("--config", "configs/bggpt-7b/plan.yaml")
    assert done.returncode == 0, done.stderr
    for expected in ("memory per GPU", "frozen base weights", "activations", "A100-80GB memory: fits",
                     "ZeRO-0 (auto: the replicated weights fit", "ZeRO-1/2 and ZeRO-3 only",
                     "tokens/s per GPU", "wall time"):
        assert expected in done.stdout
    assert "real_accelerator" not in done.stdout + done.stderr  # DeepSpeed's accelerator probe is named, not warned
    bad = _job("--config", "configs/bggpt-7b/plan.yaml", "gpuu=H100-80GB")
    assert bad.returncode == 2
    assert "unknown key 'gpuu' (did you mean 'gpu'?)" in bad.stderr and "Traceback" not in bad.stderr
    shown = _job("--help")
    assert shown.returncode == 0
    assert "lora_target_modules" in shown.stdout and "configs/bggpt-7b/plan.yaml" in shown.stdout
    missing = _job("model=/nonexistent/dir")
    assert missing.returncode == 2 and "model='/nonexistent/dir'" in missing.stderr


def test_gpu_of_device_reads_torch_s_device_names():
    assert gpu_of_device("NVIDIA H100 80GB HBM3").name == "H100-80GB"
    assert gpu_of_device("NVIDIA H200").name == "H200-141GB"
    assert gpu_of_device("Some Other Accelerator") is None
