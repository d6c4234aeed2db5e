"""Configuration of the training stages (``jobs/mntp.py``, ``jobs/simcse.py``, ``jobs/contrastive.py``).

One global batch size is fixed per preset; the per-worker batch and the gradient accumulation are
derived from the number of workers, so a run means the same optimisation on 1 GPU or 64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from bg2vec.errors import ConfigError
from bg2vec.modeling.pooling import POOLING_MODES

TINY_PREFIX = "tiny:"


@dataclass
class ModelSettings:
    """The base LLM and how it is loaded on every worker."""

    name_or_path: str = "tiny:mistral"
    """Hub id or local folder of the base decoder (e.g. INSAIT-Institute/BgGPT-7B-Instruct-v0.2), or
    tiny:<family> (mistral, llama, qwen2, qwen3, gemma2, gemma3_text) for a small random decoder
    built with the prepared data's tokenizer (the CPU preset; saved with the output)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of name_or_path."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Weights and compute: auto is bfloat16 on GPU, float32 on CPU."""
    attn_implementation: str | None = "sdpa"
    """eager, sdpa or flash_attention_2 (when installed); empty: transformers' default."""
    trust_remote_code: bool = False
    """Allow model code from the hub to run; off unless you trust the repository."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (non-reentrant, so LoRA needs no input-grad hack)."""
    tiny_hidden_size: int = 128
    """tiny:<family> only: hidden size of the random decoder."""
    tiny_layers: int = 4
    """tiny:<family> only: number of decoder layers."""


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the attention and MLP projections; the base stays frozen."""

    r: int = 16
    """Rank of the update."""
    alpha: int = 32
    """Scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names the adapters wrap."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.target_modules:
            raise ConfigError("lora: r >= 1, alpha > 0, 0 <= dropout < 1 and target_modules non-empty are required")


@dataclass
class OptimSettings:
    """AdamW with a warmup then a linear or cosine decay (or constant)."""

    lr: float = 5e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay (on the adapters, the only trained weights)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to lr."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after the warmup (to 0 at max_steps for linear and cosine)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global norm); 0 turns it off."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or self.max_grad_norm < 0 or len(self.betas) != 2:
            raise ConfigError("optim: lr > 0, warmup_steps >= 0, max_grad_norm >= 0 and two betas are required")


@dataclass
class ScalingSettings:
    """The Ray Train worker group (one worker per GPU)."""

    num_workers: int = 1
    """Data-parallel workers (GPUs), across all nodes."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); off: CPU workers (gloo), as in the tiny preset and the tests."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    accelerator_type: str | None = None
    """Ray accelerator type to schedule on (e.g. A100, H100); empty: any GPU."""

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker < 0:
            raise ConfigError("scaling.num_workers must be >= 1 and scaling.cpus_per_worker >= 0")


@dataclass
class RunSettings:
    """Where the run lives, how often it logs and checkpoints, and how it survives failures."""

    name: str | None = None
    """Run name; starting a run with the name of an unfinished one resumes it from its last
    checkpoint. Empty: the stage name (mntp, simcse)."""
    storage_path: str | None = None
    """Checkpoints, metrics and TensorBoard files: a local folder shared by all nodes or a cloud URI
    (s3://, gs://). Empty: OUTPUT.runs next to the output directory."""
    max_failures: int = 3
    """Worker-group restarts from the last checkpoint after a worker or node dies (-1: unlimited)."""
    checkpoint_every: int = 100
    """Optimizer steps between checkpoints (one more is written at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept; older ones are deleted."""
    log_every: int = 10
    """Optimizer steps between metric windows (console on rank 0, TensorBoard, MLflow). Ray Train
    (and Tune) receive the evaluations and checkpoints."""
    eval_every: int = 100
    """Optimizer steps between validation passes (0: only at the end)."""
    eval_batches: int = 20
    """Validation batches per worker in each validation pass."""
    dev_blocks: int = 256
    """Validation blocks of the dev score, computed in each validation pass: continuation retrieval
    with the model's embeddings (bg2vec.training.dev_score; the objective of jobs/tune.py). The
    first ones of the prepared validation split; 0: no dev score."""
    mlflow_tracking_uri: str | None = None
    """Also log metrics to this MLflow server (needs the mlflow package)."""
    ray_address: str | None = None
    """Ray cluster to join (e.g. auto); empty: RAY_ADDRESS if set (ray job submit), else a new local Ray."""

    def __post_init__(self) -> None:
        if min(self.checkpoint_every, self.keep_checkpoints, self.log_every, self.eval_batches) < 1:
            raise ConfigError("run.checkpoint_every, run.keep_checkpoints, run.log_every and "
                              "run.eval_batches must be >= 1")
        if self.eval_every < 0 or self.dev_blocks < 0:
            raise ConfigError("run.eval_every and run.dev_blocks must be >= 0")


@dataclass
class TrainConfig:
    """Settings shared by the training stages."""

    output: str
    """Where the trained model directory goes (adapter, tokenizer, bg2vec_config.json, written last)."""
    data: str | None = None
    """A prepared data directory (jobs/prepare_data.py output; local or cloud URI). MNTP and SimCSE
    train on it; the contrastive stage reads pairs= instead."""
    max_steps: int = 1000
    """Optimizer steps."""
    global_batch_size: int = 32
    """Samples per optimizer step over all workers (fixed: the per-worker share is derived)."""
    micro_batch_size: int | None = None
    """Samples per worker per forward pass; empty: global_batch_size / num_workers. Smaller values
    trade speed for memory through gradient accumulation."""
    seed: int = 42
    """Seeds the data order, masking, dropout and the tiny model's initialisation."""
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    """DeepSpeed ZeRO stage: 3 shards the (frozen) weights too, 2 only the LoRA gradients and Adam states.
    0 is plain data parallelism. auto: the least sharding that fits: 0 where every rank can hold the whole
    base next to its activations (no ZeRO hooks or per-layer gathers), ZeRO-2 where sharding the adapters'
    gradients and Adam states makes it fit, else ZeRO-3; decided on the workers from the model's config and
    the device memory, with the planner's formulas (bg2vec.training.zero_stage)."""
    offload_optimizer: bool = False
    """ZeRO-Offload the optimizer state to CPU memory."""
    overwrite: bool = False
    """Replace an existing trained model directory at output."""
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    run: RunSettings = field(default_factory=RunSettings)

    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.output or (self.needs_data and not self.data):
            raise ConfigError("data and output are required: give data=DIR output=DIR")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        self.gradient_accumulation  # noqa: B018 (validates the batch arithmetic)

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.global_batch_size // self.scaling.num_workers

    @property
    def gradient_accumulation(self) -> int:
        per_step = self.micro_batch * self.scaling.num_workers
        if self.micro_batch < 1 or self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size "
                f"({self.micro_batch}) x scaling.num_workers ({self.scaling.num_workers}); choose sizes that divide")
        return self.global_batch_size // per_step


@dataclass
class MNTPConfig(TrainConfig):
    """Stage 1 of LLM2Vec: bidirectional attention + masked next-token prediction, LoRA."""

    mask_ratio: float = 0.2
    """Share of tokens masked in each block (the reference BgGPT run used 0.8)."""
    mask_token: Literal["blank", "eos", "mask"] = "blank"
    """What replaces a masked token: "_" (blank, as in the reference runs), the EOS token, or a new
    <mask> token initialised to the mean embedding."""
    mask_strategy: Literal["all_mask", "bert"] = "all_mask"
    """all_mask: every chosen token becomes the mask token; bert: 80% mask, 10% random, 10% kept."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


@dataclass
class EncoderStageConfig(TrainConfig):
    """Settings of the stages that train the encoder itself on contrastive losses (SimCSE, contrastive)."""

    mntp: str | None = None
    """The MNTP output directory whose adapter is merged into the base before this stage."""
    temperature: float = 0.05
    """Softmax temperature of the contrastive loss (scale = 1 / temperature = 20)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    hidden_dropout: float = 0.0
    """Dropout on each attention and MLP block's output, before the residual add, as BERT's (extra noise;
    0 as in the reference runs; bg2vec.modeling.dropout)."""
    pooling: str = "mean"
    """How token states become one vector (mean, weighted_mean, last, bos); saved with the model."""
    max_length: int = 128
    """Tokens per training text (longer ones are truncated); also the encoder's saved max_length
    unless encoder_max_length is set."""
    encoder_max_length: int = 512
    """max_length written to bg2vec_config.json for inference."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"temperature must be in (0, 10], got {self.temperature}")
        if not (0 <= self.attention_dropout < 1 and 0 <= self.hidden_dropout < 1):
            raise ConfigError("attention_dropout and hidden_dropout must be in [0, 1)")
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"pooling={self.pooling!r} is not one of {', '.join(POOLING_MODES)}")
        if self.max_length < 8 or self.encoder_max_length < 8:
            raise ConfigError("max_length and encoder_max_length must be >= 8")
        if self.global_batch_size < 2:
            raise ConfigError(f"{type(self).__name__} needs global_batch_size >= 2 (in-batch negatives)")


@dataclass
class SimCSEConfig(EncoderStageConfig):
    """Stage 2 of LLM2Vec: unsupervised SimCSE on the MNTP-trained model (its adapter merged)."""

    attention_dropout: float = 0.3
    """Dropout on attention probabilities: the noise that makes the two views differ."""
    text_unit: Literal["paragraph", "article"] = "paragraph"
    """Training texts from the prepared pages: every paragraph (a line of the cleaned text with at
    least min_chars characters), or whole articles (the reference runs), truncated to max_length."""
    min_chars: int = 80
    """Shortest paragraph used as a training text."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.mntp:
            raise ConfigError("mntp is empty: give mntp=DIR (the jobs/mntp.py output to start from)")


PAIR_KINDS = ("title_lead", "section", "lead_body", "crops", "inverse_cloze", "user")


@dataclass
class ContrastiveConfig(EncoderStageConfig):
    """Stage 3 of LLM2Vec: contrastive training on (query, positive, hard negatives) pairs, a new LoRA
    over the merged MNTP (LLM2Vec's choice) or MNTP + SimCSE adapters (bg2vec.objectives.contrastive).

    The temperature's default is SimCSE's and sentence-transformers' (scale 20); LLM2Vec's supervised
    runs use loss_scale 50 (temperature 0.02) with batches of 64 per GPU on E5's data: jobs/tune.py
    searches it. Dropout is off: the pairs, not noise, make the views differ."""

    needs_data: ClassVar[bool] = False

    pairs: str = ""
    """A pairs directory (jobs/pairs.py output; local or cloud URI): the training and validation pairs."""
    mntp: str | None = None
    """Start from this MNTP output (its adapter merged into the base), as LLM2Vec does; or simcse=."""
    simcse: str | None = None
    """Start from this SimCSE output instead (its MNTP and SimCSE adapters merged); exactly one of mntp,
    simcse."""
    query_instruction: str = "Намери пасаж, който отговаря на заявката:\n"
    """Instruction put before every query whose pair has none of its own (the pairs' instruction column:
    null), tokenised on its own and left out of the pooling (bg2vec.modeling.inputs); saved as the
    encoder's prompts["query"], for encode(instruction=...) at query time. Passages never get one.
    "Find a passage that answers the query: " fits the mined kinds (titles, headings, sentences) and
    users' questions alike. It ends in a line break, not a space: Gemma's tokenizer then gives the same
    tokens for the instruction and the text tokenised apart (bg2vec) or joined (a sentence-transformers
    prompt). Empty: no instruction."""
    hard_negatives: int = 1
    """Mined negatives used per query: the first ones (the most similar) of each pair's negatives. A pair
    with fewer contributes what it has: every query scores all positives and all negatives of the
    global batch, so nothing needs to line up. 0: in-batch negatives only."""
    matryoshka_dims: list[int] = field(default_factory=list)
    """Leading dimensions also trained to work on their own (Matryoshka loss: the loss summed over these
    and the full dimension), e.g. [64, 128, 256]; saved with the encoder. Empty: off."""
    kinds: list[str] = field(default_factory=list)
    """Pair kinds to train on (title_lead, section, lead_body, crops, inverse_cloze, user); empty: all.
    The dev score uses all validation pairs, whatever this says."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data:
            raise ConfigError(f"data={self.data!r}: the contrastive stage trains on pairs=DIR (jobs/pairs.py "
                              f"output), not on a prepared data directory; drop data=")
        if not self.pairs:
            raise ConfigError("pairs is empty: give pairs=DIR (the jobs/pairs.py output to train on)")
        if bool(self.mntp) == bool(self.simcse):
            raise ConfigError("give exactly one of mntp=DIR (start from MNTP, as LLM2Vec) and simcse=DIR "
                              f"(start from MNTP + SimCSE); got mntp={self.mntp!r}, simcse={self.simcse!r}")
        if self.hard_negatives < 0:
            raise ConfigError(f"hard_negatives must be >= 0, got {self.hard_negatives}")
        if any(d < 1 for d in self.matryoshka_dims) or len(set(self.matryoshka_dims)) < len(self.matryoshka_dims):
            raise ConfigError(f"matryoshka_dims={self.matryoshka_dims} must be distinct dimensions >= 1")
        unknown = sorted(set(self.kinds) - set(PAIR_KINDS))
        if unknown:
            raise ConfigError(f"kinds: {unknown} are not pair kinds; choose from {', '.join(PAIR_KINDS)}")

    @property
    def start(self) -> str:
        """The directory this stage starts from (mntp or simcse)."""
        return self.mntp or self.simcse
