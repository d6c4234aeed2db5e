"""The plan as the table jobs/plan.py prints."""

from __future__ import annotations

from bg2vec.planning.estimate import GIB, REFERENCE, Plan


def render(p: Plan) -> str:
    """The plan as a printed table."""
    cfg, arch, mem, gpu = p.config, p.architecture, p.memory, p.gpu
    stage3, row = cfg.zero_stage == 3, "  {:60s} {:>12s}"
    accumulation = cfg.global_batch_size / (cfg.micro_batch * cfg.gpus)
    lines = [
        f"bg2vec plan: {cfg.model} ({arch.model_type}), {cfg.stage.upper()}, on {cfg.nodes} node(s) x "
        f"{cfg.gpus_per_node} {gpu.name} = {cfg.gpus} GPU(s)",
        f"  {p.params:,} parameters as loaded; LoRA r={cfg.lora_rank} on {', '.join(cfg.lora_target_modules)}:",
        f"  {p.lora_params:,} trained ({p.lora_params / p.params:.2%}); ZeRO-{cfg.zero_stage}"
        f"{f' (auto: {p.zero_choice})' if p.zero_choice else ''}, gradient checkpointing "
        f"{'on' if cfg.gradient_checkpointing else 'off'}, {cfg.dtype}, {cfg.attn_implementation} attention",
        f"  {cfg.max_steps} steps x {cfg.global_batch_size} rows of {cfg.seq_len} tokens = {cfg.gpus} GPU(s) x "
        f"micro-batch {cfg.micro_batch} x accumulation {accumulation:g}"
        + (" (SimCSE: both views in one pass, 2 x the rows)" if cfg.stage == "simcse" else ""),
        "",
        row.format("memory per GPU", "GiB"),
    ]
    parts = [(f"frozen base weights ({cfg.dtype}{f', sharded 1/{cfg.gpus} by ZeRO-3' if stage3 else ''})",
              mem.frozen_weights)]
    if stage3:
        parts.append(("ZeRO-3 gathered weights (largest unit + prefetch bucket)", mem.gathered_weights))
    parts += [
        (f"LoRA weights{' (sharded)' if stage3 else ''}", mem.lora_weights),
        (f"LoRA gradients, bf16 + fp32{' (sharded)' if cfg.zero_stage >= 2 else ''}", mem.gradients),
        (f"Adam: fp32 master + 2 moments{' (sharded)' if cfg.zero_stage >= 1 else ''}", mem.optimizer),
        (f"activations: {arch.num_hidden_layers} layer inputs + 1 layer recomputed" if cfg.gradient_checkpointing
         else f"activations: all {arch.num_hidden_layers} layers", mem.activations),
        ("final norm, masked rows and a chunk of their logits" if cfg.stage == "mntp" else "final norm", mem.head),
        ("fixed overhead (CUDA context, NCCL, fragmentation)", mem.overhead),
        ("total", mem.total),
    ]
    lines += [row.format(label, f"{nbytes / GIB:.2f}") for label, nbytes in parts]
    lines.append(row.format(f"{gpu.name} memory: {'fits' if p.fits else 'DOES NOT FIT'}, "
                            f"{mem.total / (gpu.memory_gib * GIB):.0%} used", f"{gpu.memory_gib:.2f}"))
    states = mem.frozen_weights + mem.gathered_weights + mem.lora_weights + mem.gradients + mem.optimizer
    lines.append(row.format("model states above (weights, LoRA, gradients, Adam)", f"{states / GIB:.2f}"))
    if p.deepspeed:
        function, nbytes = p.deepspeed
        lines += [row.format(f"DeepSpeed {function}", f"{nbytes / GIB:.2f}"),
                  "    (DeepSpeed's estimators assume every parameter is trained with Adam: full fine-tuning, the",
                  "    'without LoRA' bound; here the base is frozen and only the LoRA parameters have gradients",
                  "    and Adam states)"]
    else:
        lines.append("  (DeepSpeed has model-state estimators for ZeRO-1/2 and ZeRO-3 only)")
    hours = p.seconds / 3600
    recompute = " + recompute" if cfg.gradient_checkpointing else ""
    lines += [
        "",
        f"  time at {cfg.mfu:.0%} MFU of {gpu.peak_tflops:g} peak bf16 TFLOPS per GPU",
        row.format(f"FLOPs per token (frozen base + LoRA{recompute})", f"{p.flops_per_token:.3e}"),
        row.format("tokens processed" + (" (both views)" if cfg.stage == "simcse" else ""), f"{p.tokens:,}"),
        row.format("total FLOPs", f"{p.flops:.3e}"),
        row.format("tokens/s per GPU", f"{p.tokens_per_second_per_gpu:,.0f}"),
        f"    (reference: {REFERENCE})",
        row.format("wall time, hours", f"{hours:.2f}"),
        row.format("GPU-hours", f"{hours * cfg.gpus:,.1f}"),
    ]
    if p.cost is not None:
        lines.append(row.format(f"cost at {cfg.price_per_gpu_hour:g} per GPU-hour", f"{p.cost:,.2f}"))
    lines += [""] * bool(p.warnings) + [f"WARNING: {w}" for w in p.warnings]
    return "\n".join(lines)
