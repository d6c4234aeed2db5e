"""Plan a training run before renting GPUs: memory per GPU and time, from the model's shape alone.

For a model (a built-in BgGPT shape or a local config.json; weights are never read), a stage, the
batch, LoRA, the ZeRO stage and a cluster, :func:`plan` estimates what each GPU holds and how long the
configured steps take at a stated utilisation (MFU); :func:`render` prints it as a table, with a
warning and what to change when it will not fit. DeepSpeed's own model-state estimators are shown
next to ours: they assume every parameter is trained with Adam (full fine-tuning), so they are the
"without LoRA" upper bound.

Memory per GPU, in bytes (N base parameters, n GPUs, e = 2 for bf16 or 4 for fp32, T = tokens of
one micro-batch = rows x seq_len, where SimCSE's rows are twice the micro-batch: both views go
through one forward pass):

* frozen base weights: e*N, divided by n under ZeRO-3 (which also shards frozen parameters);
* ZeRO-3 gathered weights: e * (largest unit + DeepSpeed's default prefetch bucket of 5e7
  parameters), the full weights it gathers just before each unit runs (the embedding, or a whole
  decoder layer: bg2vec makes each layer one ZeRO-3 unit);
* LoRA (P trainable parameters), as DeepSpeed's estimators count bf16 training: weights e*P, gradients
  6*P (bf16 + fp32), Adam 12*P (fp32 master copy + two moments); in fp32 the weights are their own
  master: 4*P, 4*P, 8*P. Stage 1 shards the Adam states over n, stage 2 also the gradients, stage 3
  also the weights;
* activations, counting the tensors transformers' decoder layers keep for the backward pass when
  the base is frozen (checked against autograd in tests/test_plan.py). A frozen projection keeps
  nothing: its input gradient needs only its weight. Per token of one layer:
  4 * h per norm (RMSNorm's fp32 copy of its input; 4 norms in Gemma, + 4 * (q + kv) for q/k-norms)
  + 3*e*i in the MLP (gate output, its activation, up output)
  + attention: SDPA/flash e*(2*q + 2*kv) (q, k, v, output); eager e*3*q (q, and k and v expanded
  to every head) + heads*seq*(4 + e) (the fp32 softmax and its cast: the s^2 term of Korthikanti
  et al. 2022), + e*heads*seq for Gemma-2's logit soft-capping, + heads*seq with attention dropout
  + LoRA: e*r per adapter, and with LoRA dropout (e + 1) * in_features per adapter (its dropped-out
  input and mask); without, the adapters read the projections' inputs, kept once each: e*h for
  attention, e*h for the MLP, e*i for down_proj, e*q for o_proj under eager attention.
  With gradient checkpointing every layer keeps only its input (e*h per token) and one layer at a
  time is recomputed with all of the above; without it every layer keeps everything;
* head: the final norm's fp32 copy (4*h per token) and, for MNTP, the scored rows only (mask_ratio of
  the tokens: bg2vec.objectives.mntp.MaskedNextTokenModel): their hidden states and input gradients
  (2*e*h each) and one chunk of at most 1,024 rows of logits at 12 bytes per logit (the matmul's
  output, its fp32 copy and the softmax that becomes its gradient), never all B*L*V at once;
* a fixed overhead (CUDA context, NCCL buffers, allocator fragmentation; overhead_gib).

Time: FLOPs per token = forward 2*(W + H) + A, backward 2*(W + H) + 2*A (only input gradients: the
base is frozen, so its weight-gradient matmuls are skipped; a full fine-tune would add another
2*(W + H)), recompute 2*W + A with gradient checkpointing, and 6*P (+2*P recomputed) for LoRA itself.
W = the layers' matmul weights, H = mask_ratio*V*h for MNTP's LM head (the scored rows only; 0 for
SimCSE), A = 4*layers*seq*q for the two attention matmuls over the full (bidirectional) sequence.
Time = FLOPs / (GPUs x peak x MFU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from bg2vec._compat import deepspeed_cpu_accelerator
from bg2vec.errors import ConfigError
from bg2vec.objectives.mntp import MNTP_CHUNK_ROWS
from bg2vec.planning.shapes import (
    GPU,
    GPUS,
    HUB_IDS,
    LORA_TARGETS,
    PRESETS,
    Architecture,
    base_params,
    config_json,
    gpu_spec,
    largest_module_params,
    load_architecture,
    lora_params,
    matmul_params_per_layer,
)

GIB = 2**30
PREFETCH_BUCKET = 50_000_000  # DeepSpeed's default stage3_prefetch_bucket_size (bg2vec keeps it)
LOGIT_BYTES = 12  # MNTP's memory per logit of the chunk at the loss (see the module doc)
REFERENCE = "the original BgGPT-7B MNTP run did about 2,700 tokens/s on one A100 at seq 512"
# Host CPU time of one ZeRO-3 forward + backward per decoder layer, whatever the micro-batch: its
# per-layer gathers and hooks, and the kernel launches. bench/gpu_mntp.py on an H100 (BgGPT-7B's 32
# layers, DeepSpeed 0.19.8): 835 and 972 ms per micro-batch of 4 and 8 blocks, where the GPU work
# alone took 405 and 526 ms. Below it the GPU waits for the host.
ZERO3_HOST_SECONDS_PER_LAYER = 0.028
AUTO_ZERO_HEADROOM = 0.85  # zero_stage auto replicates the base only below this share of the memory (allocator spikes)


@dataclass
class PlanConfig:
    """Estimate the memory per GPU and the time of an MNTP or SimCSE run before starting it."""

    model: str = "bggpt-7b"
    """A built-in shape (bggpt-7b, bggpt-gemma2-9b, bggpt-gemma2-2.6b, mistral-7b) or the hub id of
    one, or a local config.json (or a model folder holding one). Only the shape is read, never weights."""
    stage: Literal["mntp", "simcse"] = "mntp"
    """mntp: the *ForCausalLM with its LM head and logits; simcse: the bare model, both views of every
    text in one forward pass (twice the rows)."""
    seq_len: int = 512
    """Tokens per row (MNTP's block length; SimCSE's max_length, an upper bound on its padded rows)."""
    global_batch_size: int = 32
    """Rows per optimizer step over all GPUs (as in the training configs)."""
    micro_batch_size: int | None = None
    """Rows per GPU per forward pass; empty: global_batch_size / GPUs."""
    max_steps: int = 1000
    """Optimizer steps."""
    mask_ratio: float = 0.2
    """mntp only: the share of tokens masked, the rows the LM head is applied to."""
    lora_rank: int = 16
    """LoRA rank r."""
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Projections with adapters (of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."""
    lora_dropout: float = 0.05
    """LoRA's input dropout: above 0 every adapted projection keeps its dropped-out input and mask."""
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    """DeepSpeed ZeRO stage: 0 plain data parallelism, 1 shards Adam states, 2 also gradients, 3 also the
    (frozen) weights; auto: the least sharding that fits the GPU (:func:`choose_zero_stage`)."""
    gradient_checkpointing: bool = True
    """Keep only each layer's input and recompute the layer in the backward pass."""
    dtype: Literal["bf16", "fp32"] = "bf16"
    """Weights and activations."""
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    """eager keeps the heads x seq x seq attention probabilities (Gemma-2 runs eager or flash only)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (SimCSE's noise); eager attention then keeps its mask."""
    gpu: str = "A100-80GB"
    """GPU type: A10G-24GB, L4-24GB, L40S-48GB, A100-40GB, A100-80GB, H100-80GB, H200-141GB."""
    gpus_per_node: int = 8
    """GPUs per node (DeepSpeed's estimators use the node layout)."""
    nodes: int = 1
    """Nodes."""
    mfu: float = 0.35
    """Model FLOPs utilisation assumed for the time: achieved / peak dense bf16 FLOPs."""
    overhead_gib: float = 2.0
    """Fixed memory per GPU outside the model: CUDA context, NCCL buffers, allocator fragmentation."""
    price_per_gpu_hour: float | None = None
    """Price of one GPU-hour, for a cost line; empty: no cost."""

    def __post_init__(self) -> None:
        positive = {"seq_len": self.seq_len, "global_batch_size": self.global_batch_size,
                    "max_steps": self.max_steps, "lora_rank": self.lora_rank,
                    "gpus_per_node": self.gpus_per_node, "nodes": self.nodes,
                    "micro_batch_size": 1 if self.micro_batch_size is None else self.micro_batch_size}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        unknown = [m for m in self.lora_target_modules if m not in LORA_TARGETS]
        if unknown or not self.lora_target_modules:
            raise ConfigError(f"lora_target_modules={self.lora_target_modules} must be a non-empty list of "
                              f"{', '.join(LORA_TARGETS)}")
        for key, value in {"lora_dropout": self.lora_dropout, "attention_dropout": self.attention_dropout}.items():
            if not 0 <= value < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {value}")
        if not 0 < self.mask_ratio <= 1:
            raise ConfigError(f"mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"mfu must be in (0, 1], got {self.mfu} (e.g. 0.35 for 35% of the peak)")
        if self.overhead_gib < 0 or (self.price_per_gpu_hour or 0) < 0:
            raise ConfigError("overhead_gib and price_per_gpu_hour must be >= 0")
        gpu_spec(self.gpu)
        if self.model.lower() not in PRESETS and self.model.lower() not in HUB_IDS:
            config_json(self.model)

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def views(self) -> int:
        """Rows per text in a forward pass: SimCSE runs both views of every text together."""
        return 2 if self.stage == "simcse" else 1

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or max(1, self.global_batch_size // self.gpus)

    @property
    def bytes_per_value(self) -> int:
        return 2 if self.dtype == "bf16" else 4


# ---- memory ----------------------------------------------------------------------------------------

def layer_activation_bytes_per_token(arch: Architecture, cfg: PlanConfig) -> int:
    """What one decoder layer keeps for its backward pass, per token, with the base frozen (the
    formula in the module doc)."""
    e, h, q, kv, i = cfg.bytes_per_value, arch.hidden_size, arch.q_dim, arch.kv_dim, arch.intermediate_size
    targets = set(cfg.lora_target_modules)
    eager = cfg.attn_implementation == "eager"
    norms = 4 * ((4 if arch.gemma else 2) * h + (q + kv) * arch.qk_norm)
    mlp = 3 * e * i
    if eager:
        per_score = 4 + e + e * arch.attn_logit_softcapping + (cfg.attention_dropout > 0)
        attention = 3 * e * q + arch.num_attention_heads * cfg.seq_len * per_score
    else:
        attention = e * (2 * q + 2 * kv)
    lora = e * cfg.lora_rank * len(targets)
    if cfg.lora_dropout > 0:
        lora += (e + 1) * sum(arch.linear_shapes()[t][0] for t in targets)
    else:
        lora += e * (h * bool(targets & {"q_proj", "k_proj", "v_proj"}) + h * bool(targets & {"gate_proj", "up_proj"})
                     + i * ("down_proj" in targets) + q * ("o_proj" in targets and eager))
    return norms + mlp + attention + lora


@dataclass
class Memory:
    """Bytes per GPU, by what holds them."""

    frozen_weights: int
    gathered_weights: int
    lora_weights: int
    gradients: int
    optimizer: int
    activations: int
    head: int
    overhead: int

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


def memory(cfg: PlanConfig, arch: Architecture) -> Memory:
    if cfg.zero_stage == "auto":
        cfg = dataclasses.replace(cfg, zero_stage=choose_zero_stage(cfg, arch, _capacity(cfg))[0])
    e, n, stage = cfg.bytes_per_value, cfg.gpus, cfg.zero_stage
    params = base_params(arch, lm_head=cfg.stage == "mntp")
    trained = lora_params(arch, cfg.lora_rank, cfg.lora_target_modules)
    grad_bytes, optim_bytes = (6, 12) if e == 2 else (4, 8)

    def shard(nbytes: int, from_stage: int) -> int:
        return nbytes // n if stage >= from_stage else nbytes

    rows = cfg.micro_batch * cfg.views
    tokens = rows * cfg.seq_len
    layer = layer_activation_bytes_per_token(arch, cfg) * tokens
    if cfg.gradient_checkpointing:
        activations = arch.num_hidden_layers * e * arch.hidden_size * tokens + layer
    else:
        activations = arch.num_hidden_layers * layer
    head = tokens * 4 * arch.hidden_size  # the final norm's fp32 copy of its input
    if cfg.stage == "mntp":
        scored = int(tokens * cfg.mask_ratio)
        head += scored * 2 * e * arch.hidden_size + min(scored, MNTP_CHUNK_ROWS) * LOGIT_BYTES * arch.vocab_size
    return Memory(
        frozen_weights=shard(e * params, 3),
        gathered_weights=e * (largest_module_params(arch) + PREFETCH_BUCKET) if stage == 3 else 0,
        lora_weights=shard(e * trained, 3), gradients=shard(grad_bytes * trained, 2),
        optimizer=shard(optim_bytes * trained, 1), activations=activations, head=head,
        overhead=int(cfg.overhead_gib * GIB))


def deepspeed_full_finetune(cfg: PlanConfig, arch: Architecture) -> tuple[str, int] | None:
    """(function, bytes per GPU) of DeepSpeed's own model-states estimate for training every parameter
    with Adam, no offload; None for ZeRO-0, which it has no estimator for."""
    params = base_params(arch, lm_head=cfg.stage == "mntp")
    import torch

    if not torch.cuda.is_available():
        deepspeed_cpu_accelerator()  # the estimators need no accelerator; DeepSpeed would warn it found none
    if cfg.zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
            params, largest_module_params(arch), cfg.gpus_per_node, cfg.nodes, cpu_offload=False,
            cpu_offload_params=False)
        return "estimate_zero3_model_states_mem_needs", gpu_bytes
    if cfg.zero_stage in (1, 2):  # DeepSpeed has one estimator for both; it shards gradients as stage 2
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu_bytes = estimate_zero2_model_states_mem_needs(params, cfg.gpus_per_node, cfg.nodes,
                                                             cpu_offload=False)
        return "estimate_zero2_model_states_mem_needs", gpu_bytes
    return None


def _capacity(cfg: PlanConfig) -> int:
    return int(gpu_spec(cfg.gpu).memory_gib * GIB)


def choose_zero_stage(cfg: PlanConfig, arch: Architecture, capacity_bytes: int) -> tuple[int, str]:
    """``zero_stage: auto``: (stage, why), the least sharding that fits. Plain data parallelism (DeepSpeed
    stage 0: each rank holds everything and the gradients are all-reduced, no ZeRO hooks) when every rank
    can hold the whole frozen base: under LoRA what ZeRO-1/2 would shard (the adapters' Adam states and
    gradients) is a few hundred MB, and no layer is gathered before it runs (bench/gpu_mntp.py on an H100,
    BgGPT-7B at micro-batch 4: ZeRO-3 ran at 0.49x a plain loop, ZeRO-2 at 0.76x). ZeRO-2 when sharding
    those states is what makes it fit (a large LoRA rank), ZeRO-3 when the replicated weights would not
    fit: then the only way."""
    fits = AUTO_ZERO_HEADROOM * capacity_bytes
    replicated = memory(dataclasses.replace(cfg, zero_stage=0), arch).total
    share = f"{replicated / GIB:.1f} of {capacity_bytes / GIB:.1f} GiB"
    if replicated <= fits:
        return 0, f"the replicated weights fit ({share}), so plain data parallelism: nothing sharded, no ZeRO hooks"
    sharded = memory(dataclasses.replace(cfg, zero_stage=2), arch).total
    if sharded <= fits:
        return 2, (f"the replicated weights fit once the adapters' gradients and Adam states are sharded "
                   f"({sharded / GIB:.1f} of {capacity_bytes / GIB:.1f} GiB), so no per-layer gathers")
    return 3, (f"replicated, the weights would not fit ({sharded / GIB:.1f} of {capacity_bytes / GIB:.1f} GiB), "
               f"so they are sharded")


# ---- time ------------------------------------------------------------------------------------------

def flops_per_token(cfg: PlanConfig, arch: Architecture) -> int:
    """Training FLOPs per processed token with a frozen base and LoRA (the module doc's formula)."""
    weights = arch.num_hidden_layers * matmul_params_per_layer(arch)
    head = int(cfg.mask_ratio * arch.vocab_size * arch.hidden_size) if cfg.stage == "mntp" else 0
    attention = 4 * arch.num_hidden_layers * cfg.seq_len * arch.q_dim
    lora = lora_params(arch, cfg.lora_rank, cfg.lora_target_modules)
    forward = 2 * (weights + head) + attention + 2 * lora
    backward = 2 * (weights + head) + 2 * attention + 4 * lora
    recompute = 2 * weights + attention + 2 * lora if cfg.gradient_checkpointing else 0
    return forward + backward + recompute


# ---- the plan --------------------------------------------------------------------------------------

@dataclass
class Plan:
    """Everything :func:`render` prints, as numbers."""

    config: PlanConfig
    architecture: Architecture
    gpu: GPU
    params: int
    lora_params: int
    memory: Memory
    deepspeed: tuple[str, int] | None
    tokens: int
    flops_per_token: int
    flops: int
    seconds: float
    tokens_per_second_per_gpu: float
    cost: float | None
    warnings: list[str]
    zero_choice: str | None = None
    """Why ``zero_stage: auto`` chose the stage in ``config`` (None when it was given)."""

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.gpu.memory_gib * GIB


def plan(cfg: PlanConfig) -> Plan:
    """Memory per GPU, FLOPs, time, cost and warnings of the run ``cfg`` describes."""
    arch = load_architecture(cfg.model)
    gpu = gpu_spec(cfg.gpu)
    zero_choice = None
    if cfg.zero_stage == "auto":
        stage, zero_choice = choose_zero_stage(cfg, arch, _capacity(cfg))
        cfg = dataclasses.replace(cfg, zero_stage=stage)
    mem = memory(cfg, arch)
    rows_per_step = cfg.global_batch_size * cfg.views
    tokens = rows_per_step * cfg.seq_len * cfg.max_steps
    per_token = flops_per_token(cfg, arch)
    flops = per_token * tokens
    achieved = gpu.peak_tflops * 1e12 * cfg.mfu
    seconds = flops / (cfg.gpus * achieved)
    cost = None if cfg.price_per_gpu_hour is None else seconds / 3600 * cfg.gpus * cfg.price_per_gpu_hour
    return Plan(config=cfg, architecture=arch, gpu=gpu, params=base_params(arch, cfg.stage == "mntp"),
                lora_params=lora_params(arch, cfg.lora_rank, cfg.lora_target_modules), memory=mem,
                deepspeed=deepspeed_full_finetune(cfg, arch), tokens=tokens, flops_per_token=per_token,
                flops=flops, seconds=seconds, tokens_per_second_per_gpu=achieved / per_token, cost=cost,
                warnings=_warnings(cfg, arch, gpu, mem, per_token), zero_choice=zero_choice)


def _warnings(cfg: PlanConfig, arch: Architecture, gpu: GPU, mem: Memory, per_token: int) -> list[str]:
    notes = []
    capacity = gpu.memory_gib * GIB
    if mem.total > capacity:
        notes.append(f"WILL NOT FIT: {mem.total / GIB:.1f} GiB per GPU needed, a {gpu.name} has "
                     f"{gpu.memory_gib:.1f} GiB. What would: " + "; ".join(_remedies(cfg, arch)))
    elif mem.total > 0.9 * capacity:
        notes.append(f"tight: {mem.total / capacity:.0%} of a {gpu.name}'s memory leaves little room for "
                     f"allocator spikes; keep a lower micro_batch_size at hand")
    per_pass = cfg.micro_batch * cfg.gpus
    if cfg.global_batch_size % per_pass:
        notes.append(f"global_batch_size={cfg.global_batch_size} is not a multiple of micro_batch_size "
                     f"({cfg.micro_batch}) x {cfg.gpus} GPUs: the training jobs refuse it; choose sizes that divide")
    host = _zero3_host_bound(cfg, arch, gpu, per_token)
    if host is not None:
        notes.append(host)
    if arch.model_type == "gemma2" and cfg.attn_implementation == "sdpa":
        notes.append("transformers runs Gemma-2 with eager or flash_attention_2 attention only (logit "
                     "soft-capping), not sdpa: plan with attn_implementation=eager (the presets' choice)")
    return notes


def _zero3_host_bound(cfg: PlanConfig, arch: Architecture, gpu: GPU, per_token: int) -> str | None:
    """A warning when a micro-batch is too little GPU work to hide ZeRO-3's host time (a quarter or more lost)."""
    if cfg.zero_stage != 3:
        return None
    gpu_seconds = cfg.micro_batch * cfg.views * cfg.seq_len * per_token / (gpu.peak_tflops * 1e12 * cfg.mfu)
    host_seconds = ZERO3_HOST_SECONDS_PER_LAYER * arch.num_hidden_layers
    if gpu_seconds >= 0.75 * host_seconds:
        return None
    return (f"host-bound: a micro-batch of {cfg.micro_batch} x {cfg.seq_len} tokens is about {gpu_seconds:.2f} s of "
            f"{gpu.name} work, less than the ~{host_seconds:.1f} s of host CPU that ZeRO-3's per-layer gathers take "
            f"for {arch.num_hidden_layers} layers, so the GPUs wait: expect about {gpu_seconds / host_seconds:.0%} "
            f"of the tokens/s above (bench/gpu_mntp.py on an H100: 0.49x a plain loop at micro-batch 4, 0.90x at "
            f"16). Use fewer GPUs with a larger micro_batch_size, or zero_stage=auto (plain data parallelism where "
            f"the base fits)")


def _remedies(cfg: PlanConfig, arch: Architecture) -> list[str]:
    """Single changes that lower the memory per GPU, each with what it would then need."""
    changes: list[dict] = []
    if cfg.zero_stage < 3 and cfg.gpus > 1:
        changes.append({"zero_stage": 3})
    if not cfg.gradient_checkpointing:
        changes.append({"gradient_checkpointing": True})
    if cfg.zero_stage == 3:
        changes.append({"nodes": cfg.nodes * 2})
    capacity = gpu_spec(cfg.gpu).memory_gib * GIB
    micro = cfg.micro_batch
    while micro > 1:  # the largest micro-batch that fits, else the smallest
        micro //= 2
        if micro == 1 or memory(dataclasses.replace(cfg, micro_batch_size=micro), arch).total <= capacity:
            changes.append({"micro_batch_size": micro})
            break
    need_now = memory(cfg, arch).total
    remedies = []
    for change in changes:
        need = memory(dataclasses.replace(cfg, **change), arch).total
        if need < need_now:
            setting = " ".join(f"{k}={str(v).lower()}" for k, v in change.items())
            remedies.append(f"{setting} -> {need / GIB:.1f} GiB{'' if need <= capacity else ' (not enough alone)'}")
    bigger = [g for g in sorted(GPUS.values(), key=lambda g: g.memory_gib) if need_now <= g.memory_gib * GIB]
    if bigger:
        remedies.append(f"gpu={bigger[0].name}")
    return remedies
