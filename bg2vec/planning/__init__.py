"""The planner: memory per GPU and time of a training run, from the model's shape alone.

``shapes`` holds what it knows of models and GPUs, ``estimate`` the formulas (see its docstring)
and the warnings, ``render`` the printed table (``jobs/plan.py``)."""

from bg2vec.planning.estimate import (
    GIB,
    REFERENCE,
    ZERO3_HOST_SECONDS_PER_LAYER,
    Memory,
    Plan,
    PlanConfig,
    choose_zero_stage,
    flops_per_token,
    layer_activation_bytes_per_token,
    memory,
    plan,
)
from bg2vec.planning.render import render
from bg2vec.planning.shapes import (
    GPU,
    GPUS,
    LORA_TARGETS,
    PRESETS,
    Architecture,
    architecture_of,
    base_params,
    gpu_of_device,
    layer_params,
    load_architecture,
    lora_params,
    transformers_config,
)

__all__ = ["GIB", "GPU", "GPUS", "LORA_TARGETS", "PRESETS", "REFERENCE", "ZERO3_HOST_SECONDS_PER_LAYER", "Architecture",
           "Memory", "Plan", "PlanConfig", "architecture_of", "base_params", "choose_zero_stage", "flops_per_token",
           "gpu_of_device", "layer_activation_bytes_per_token", "layer_params", "load_architecture", "lora_params",
           "memory", "plan", "render", "transformers_config"]
