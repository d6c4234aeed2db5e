"""What the planner knows of models and GPUs: decoder shapes (built-in BgGPT presets or any local
config.json), GPU types with their datasheet memory and bf16 peak, and the parameter counts that
follow from a shape. No weights are read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bg2vec.errors import ConfigError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    """Total memory as nvidia-smi reports it."""
    peak_tflops: float
    """Dense bf16 tensor-core peak (without sparsity), from NVIDIA's datasheets."""


GPUS = {g.name.lower(): g for g in [
    GPU("A10G-24GB", 22.5, 70.0),  # AWS g5's A10 variant: fewer tensor FLOPs than the A10's 125
    GPU("L4-24GB", 22.5, 121.0),
    GPU("L40S-48GB", 45.0, 362.0),
    GPU("A100-40GB", 40.0, 312.0),
    GPU("A100-80GB", 80.0, 312.0),
    GPU("H100-80GB", 79.6, 989.0),  # SXM
    GPU("H200-141GB", 140.4, 989.0),
]}


@dataclass(frozen=True)
class Architecture:
    """The config.json fields that decide a decoder's sizes (names as in transformers' configs)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    attn_logit_softcapping: bool = False

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def gemma(self) -> bool:
        """Gemma-2/3: four norms per layer (before and after attention and MLP)."""
        return self.model_type in ("gemma2", "gemma3_text")

    @property
    def qk_norm(self) -> bool:
        return self.model_type in ("qwen3", "gemma3_text")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of every projection of one decoder layer."""
        h, q, kv, i = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


_MISTRAL_7B = Architecture("mistral", 32000, 4096, 14336, 32, 32, 8, 128, tie_word_embeddings=False)
_GEMMA2 = dict(model_type="gemma2", vocab_size=256000, head_dim=256, tie_word_embeddings=True,
               attn_logit_softcapping=True)
PRESETS = {
    # Mistral-7B-v0.1 with 6,000 Bulgarian tokens added to its vocabulary
    "bggpt-7b": dataclasses.replace(_MISTRAL_7B, vocab_size=38000),
    "mistral-7b": _MISTRAL_7B,
    "bggpt-gemma2-9b": Architecture(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                                    num_attention_heads=16, num_key_value_heads=8, **_GEMMA2),
    "bggpt-gemma2-2.6b": Architecture(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                      num_attention_heads=8, num_key_value_heads=4, **_GEMMA2),
}
HUB_IDS = {
    "insait-institute/bggpt-7b-instruct-v0.2": "bggpt-7b",
    "mistralai/mistral-7b-v0.1": "mistral-7b",
    "insait-institute/bggpt-gemma-2-9b-it-v1.0": "bggpt-gemma2-9b",
    "google/gemma-2-9b": "bggpt-gemma2-9b",
    "google/gemma-2-9b-it": "bggpt-gemma2-9b",
    "insait-institute/bggpt-gemma-2-2.6b-it-v1.0": "bggpt-gemma2-2.6b",
    "google/gemma-2-2b": "bggpt-gemma2-2.6b",
    "google/gemma-2-2b-it": "bggpt-gemma2-2.6b",
}


def gpu_spec(name: str) -> GPU:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise ConfigError(f"gpu={name!r} is not a known GPU type; choose one of "
                          f"{', '.join(g.name for g in GPUS.values())}") from None


def gpu_of_device(device_name: str) -> GPU | None:
    """The entry for a device as torch names it ("NVIDIA H100 80GB HBM3" -> H100-80GB), None if unknown."""
    return next((g for g in GPUS.values() if g.name.split("-")[0].lower() in device_name.lower()), None)


def config_json(model: str) -> Path:
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"model={model!r} is neither a built-in shape ({', '.join(PRESETS)}, or the hub id of one) nor "
            f"an existing config.json or model folder: give the path of the model's config.json (the "
            f"planner reads no weights and downloads nothing)")
    return path


def load_architecture(model: str) -> Architecture:
    """A built-in shape, or the one of a local config.json (read by transformers' AutoConfig)."""
    name = HUB_IDS.get(model.lower(), model.lower())
    if name in PRESETS:
        return PRESETS[name]
    from transformers import AutoConfig

    path = config_json(model)
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True).get_text_config()
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model={model!r}: cannot read {path} as a transformers config: {e}") from None
    return architecture_of(config, where=f"model={model!r} ({path})")


def architecture_of(config, where: str = "config") -> Architecture:
    """The shape of a transformers config object (defaults resolved by its own class)."""
    from bg2vec.modeling import FAMILIES

    if getattr(config, "model_type", None) not in FAMILIES:
        raise ConfigError(f"{where}: model_type {getattr(config, 'model_type', None)!r} is not a decoder bg2vec "
                          f"trains; the planner knows {', '.join(FAMILIES)}")
    try:
        heads = config.num_attention_heads
        return Architecture(
            model_type=config.model_type, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=heads, num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases; Llama-style configs switch all four with attention_bias
            qkv_bias=config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False)),
            o_bias=bool(getattr(config, "attention_bias", False)),
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            attn_logit_softcapping=getattr(config, "attn_logit_softcapping", None) is not None)
    except AttributeError as e:
        raise ConfigError(f"{where}: not a decoder config this planner knows ({e})") from None


def transformers_config(arch: Architecture, **overrides):
    """A transformers config of ``arch``'s shape (random weights of a real model's shape: the GPU benches);
    ``overrides`` are further config fields. ``architecture_of`` of it gives ``arch`` back."""
    from transformers import AutoConfig

    implied = ("model_type", "qkv_bias", "o_bias", "mlp_bias", "attn_logit_softcapping")  # the family's defaults
    fields = {f.name: getattr(arch, f.name) for f in dataclasses.fields(Architecture) if f.name not in implied}
    return AutoConfig.for_model(arch.model_type, **fields | overrides)


def matmul_params_per_layer(arch: Architecture) -> int:
    return sum(i * o for i, o in arch.linear_shapes().values())


def layer_params(arch: Architecture) -> int:
    """Projections, their biases and the norms of one decoder layer."""
    h, q, kv, i = arch.hidden_size, arch.q_dim, arch.kv_dim, arch.intermediate_size
    biases = (q + 2 * kv) * arch.qkv_bias + h * arch.o_bias + (2 * i + h) * arch.mlp_bias
    norms = (4 if arch.gemma else 2) * h + 2 * arch.head_dim * arch.qk_norm
    return matmul_params_per_layer(arch) + biases + norms


def base_params(arch: Architecture, lm_head: bool = True) -> int:
    """Embeddings, layers, final norm and (unless tied or not loaded) the LM head."""
    embed = arch.vocab_size * arch.hidden_size
    head = embed if lm_head and not arch.tie_word_embeddings else 0
    return embed + arch.num_hidden_layers * layer_params(arch) + arch.hidden_size + head


def lora_params(arch: Architecture, rank: int, targets: list[str]) -> int:
    """r * (in + out) per adapted projection (A: in -> r, B: r -> out), in every layer."""
    shapes = arch.linear_shapes()
    return arch.num_hidden_layers * sum(rank * sum(shapes[t]) for t in set(targets))


def largest_module_params(arch: Architecture) -> int:
    """The most parameters ZeRO-3 gathers at once (DeepSpeed's 'largest layer'): the embedding or
    one whole decoder layer, which bg2vec's training makes a single ZeRO-3 unit
    (bg2vec.training.model.zero3_fetch_whole_layers)."""
    return max(arch.vocab_size * arch.hidden_size, layer_params(arch))
