"""The Ray Train worker loop shared by the training stages, in three parts: setup, train, save.

Every setting arrives through ``train_loop_config`` (the stage's typed config as a dict plus what
the driver resolved: tokenizer, base model, run directory). Each worker streams its own disjoint
shard of the data, DeepSpeed shards what ``zero_stage`` says (auto: plain data parallelism where the replicated
model fits, else ZeRO-3), and every ``run.checkpoint_every`` steps all ranks write the DeepSpeed
checkpoint (adapters, optimizer, scheduler, and the position in the data) into one Ray checkpoint.
Randomness (masking, dropout, shuffling) is derived from (seed, step, rank), with no RNG state to
carry, and a resumed run skips the batches its checkpoint had consumed. With one worker it therefore
ends with the uninterrupted run's adapter (to float rounding: tests/test_contrastive_stage.py). With
several, Ray Data's streaming split hands blocks to whichever worker asks first, so which rows a
worker reads may differ from the uninterrupted run (and a resumed epoch may repeat or miss a few
rows): the steps and sample counts match, the rows of each step need not. What differs between the
stages (model, batches, loss, dev score) lives in ``bg2vec.training.stages``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bg2vec._compat import (
    deepspeed_cpu_accelerator,
    deepspeed_cpu_local_size,
    remove_deepspeed_cpu_allreduce_buffer,
)
from bg2vec.config import from_dict
from bg2vec.console import quiet_worker
from bg2vec.console.library_logs import (
    ignore_deepspeed_collective_deprecations,
    library_prints_to_log,
    worker_print,
)
from bg2vec.errors import Bg2VecError
from bg2vec.modeling.bidirectional import family_of
from bg2vec.storage import localize
from bg2vec.training.adapters import gathered_lora_state
from bg2vec.training.config import TINY_PREFIX, TrainConfig
from bg2vec.training.deepspeed_config import deepspeed_config
from bg2vec.training.dev_score import continuation_mrr
from bg2vec.training.metrics import MetricsSink
from bg2vec.training.model import (
    add_lora,
    base_config,
    flush_denormals,
    prepare_for_training,
    torch_dtype,
    zero3_fetch_whole_layers,
)
from bg2vec.training.model_dir import write_model_dir
from bg2vec.training.output import publish_dir, write_failure
from bg2vec.training.stages import STAGES
from bg2vec.training.zero_stage import resolve_zero_stage

CHECKPOINT_TAG = "deepspeed"


def train_loop_per_worker(config: dict) -> None:
    recipe = StageRecipe(config)
    recipe.setup()
    recipe.train()
    if recipe.failure is None:
        recipe.save()
    elif recipe.rank == 0:  # not raised: Ray Train would retry the run and meet the same loss again
        write_failure(config["run_dir"], recipe.failure)
    if not recipe.cfg.scaling.use_gpu:
        remove_deepspeed_cpu_allreduce_buffer(recipe.rank)


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class StageRecipe:
    def __init__(self, config: dict):
        import ray.train

        self.stage: str = config["stage"]
        self.cfg: TrainConfig = from_dict(STAGES[self.stage][0], config["cfg"], where=f"{self.stage} config")
        self.resolved = config
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.state = {"step": 0, "samples": 0, "tokens": 0, "epoch": 0, "batch_in_epoch": 0}
        self.failure: str | None = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        import ray.train
        import ray.train.torch

        cfg, local_world = self.cfg, ray.train.get_context().get_local_world_size()
        if not self.resolved.get("verbose"):
            quiet_worker(train_worker=True)
        ignore_deepspeed_collective_deprecations()
        self.device = ray.train.torch.get_device()
        if cfg.scaling.use_gpu:
            torch.cuda.set_device(self.device)
        else:
            flush_denormals()
            deepspeed_cpu_accelerator()  # before DeepSpeed is imported
            deepspeed_cpu_local_size(local_world)
        import deepspeed
        from transformers import AutoTokenizer, get_scheduler

        self.tokenizer = AutoTokenizer.from_pretrained(localize(self.resolved["tokenizer"]),
                                                       trust_remote_code=cfg.model.trust_remote_code)
        dtype = torch_dtype(cfg.model, cfg.scaling.use_gpu)
        base = self.resolved["base"]
        base_path = None if base.startswith(TINY_PREFIX) else localize(base)
        if cfg.zero_stage == "auto":  # the model's config is read only to decide this
            stage, why = resolve_zero_stage(cfg, base_config(cfg.model, self.tokenizer, base_path),
                                            seq_len=self.resolved["seq_len"], bf16=dtype == torch.bfloat16,
                                            world=self.world, local_world=local_world,
                                            device=self.device)
            self.cfg = cfg = dataclasses.replace(cfg, zero_stage=stage)
            if self.rank == 0:
                worker_print(f"[{self.stage}] {why}")
        ds_config = deepspeed_config(cfg, bf16=dtype == torch.bfloat16)
        with library_prints_to_log("deepspeed"):  # every rank's "... shm_comm_op built successfully"
            deepspeed.init_distributed(dist_init_required=False)  # over Ray Train's process group: world size
        self._hf_ds = None
        if cfg.zero_stage == 3 and base_path is not None:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(ds_config)  # from_pretrained now shards while loading

        # what this stage does its own way: the model, the batches, the loss, the dev score
        self.specifics = STAGES[self.stage][1](cfg, self.resolved, self.tokenizer, self.rank, self.world)
        model = self.specifics.load(dtype, base_path)
        self.family = family_of(model)
        torch.manual_seed(cfg.seed)  # the new LoRA's initial weights: the same in every run of this seed
        model = add_lora(prepare_for_training(model, cfg.model), cfg.lora)
        if cfg.zero_stage == 3:
            zero3_fetch_whole_layers(model)
        self.peft_model = model
        model = self.specifics.wrap(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = None
        if not cfg.offload_optimizer:
            optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                          weight_decay=cfg.optim.weight_decay)
        schedule = {"constant": "constant_with_warmup"}.get(cfg.optim.schedule, cfg.optim.schedule)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, model_parameters=trainable, config=ds_config, dist_init_required=False,
            lr_scheduler=lambda opt: get_scheduler(schedule, opt, num_warmup_steps=cfg.optim.warmup_steps,
                                                   num_training_steps=cfg.max_steps))
        self.train_shard = ray.train.get_dataset_shard("train")
        self.validation_shard = ray.train.get_dataset_shard("validation")
        self.dev_rows = self._dev_rows()
        self.sink = None
        if self.rank == 0:
            self.sink = MetricsSink(self.stage, cfg.max_steps, self.resolved.get("tensorboard"),
                                    cfg.run.mlflow_tracking_uri, self.resolved["run_name"],
                                    {"stage": self.stage, "workers": self.world, **self.resolved["cfg"]})
        self._restore()

    def _dev_rows(self):
        """This rank's share of the dev score's rows (None: no dev score)."""
        if not self.cfg.run.dev_blocks:
            return None
        import ray.train

        return self.specifics.dev_share(list(ray.train.get_dataset_shard("dev").iter_batches(batch_size=None,
                                                                                          batch_format="numpy")))

    def _restore(self) -> None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as directory:
            path, client_state = self.engine.load_checkpoint(directory, tag=CHECKPOINT_TAG, load_module_strict=False)
        if path is None or "bg2vec" not in client_state:
            raise Bg2VecError(f"the checkpoint {checkpoint.path} has no DeepSpeed state under tag {CHECKPOINT_TAG!r}")
        self.state = dict(client_state["bg2vec"])
        if self.rank == 0:
            worker_print(f"[{self.stage}] resumed from {checkpoint.path} at step {self.state['step']} "
                         f"({self.state['samples']} samples seen)")

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        cfg, state = self.cfg, self.state
        accumulation = cfg.gradient_accumulation
        batches = self._batches()
        window = torch.zeros(4, dtype=torch.float64)  # loss sum, accuracy sum, micro-batches, tokens
        if state["step"] == 0 and cfg.run.eval_every:
            # the untrained model on the same validation batches: what every later val_loss is compared with
            metrics = {**self._validate(), **self._dev_score()}
            if self.sink is not None and metrics:
                self.sink.write(0, metrics)
        started = time.perf_counter()
        self.engine.train()
        while state["step"] < cfg.max_steps:
            step = state["step"]
            for micro in range(accumulation):
                batch = next(batches)
                loss, accuracy, tokens = self._forward(batch, derived_seed(cfg.seed, step, micro, self.rank))
                self.failure = self._nonfinite(loss, step)
                if self.failure is not None:
                    return
                # contrastive losses are already the global batch's on every rank and DeepSpeed
                # averages gradients over ranks, so scale by the world size (see objectives.simcse)
                self.engine.backward(loss * self.world if self.specifics.global_loss else loss)
                self.engine.step()
                window += torch.tensor([loss.item(), accuracy.item(), 1.0, tokens], dtype=torch.float64)
            state["step"] += 1
            state["samples"] += cfg.global_batch_size
            step = state["step"]
            last = step == cfg.max_steps
            metrics = None
            if step % cfg.run.log_every == 0 or last:
                metrics = self._window_metrics(window, time.perf_counter() - started)
                window.zero_()
                started = time.perf_counter()
            evaluated = (cfg.run.eval_every and step % cfg.run.eval_every == 0) or last
            if evaluated:
                metrics = {**(metrics or {}), **self._validate(), **self._dev_score()}
            if metrics is not None and self.sink is not None:
                self.sink.write(step, metrics)
            if step % cfg.run.checkpoint_every == 0 or last:
                self._checkpoint(metrics or {})
            elif evaluated:
                # only evaluations (what Tune decides on) and checkpoints go to Ray Train: its controller
                # takes one report per worker every 2 s and report() blocks until then
                import ray.train

                ray.train.report(self._report(metrics))

    def _forward(self, batch: dict, seed: int):
        """(loss, accuracy, real tokens) of one micro-batch; ``seed`` fixes masking and dropout."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        torch.manual_seed(seed)  # dropout (LoRA's, SimCSE's) on every device
        return self.specifics.forward(self.engine, batch, seed, self.device)

    def _batches(self):
        """This worker's micro-batches, epoch after epoch, starting where the checkpoint left off."""
        cfg, state = self.cfg, self.state
        while True:
            seen = 0
            for batch in self.train_shard.iter_torch_batches(
                    batch_size=cfg.micro_batch, drop_last=True, collate_fn=self.specifics.collate,
                    local_shuffle_buffer_size=max(4 * cfg.micro_batch, 256),
                    local_shuffle_seed=derived_seed(cfg.seed, state["epoch"], self.rank)):
                seen += 1
                if seen <= state["batch_in_epoch"]:
                    continue  # consumed before the checkpoint this run resumed from
                state["batch_in_epoch"] = seen
                yield batch
            if seen == 0:
                raise Bg2VecError(f"worker {self.rank}'s share of the training data is smaller than one batch of "
                                  f"{cfg.micro_batch}: prepare more data or lower global_batch_size/micro_batch_size")
            state["epoch"] += 1
            state["batch_in_epoch"] = 0

    def _nonfinite(self, loss: torch.Tensor, step: int) -> str | None:
        """A message when any worker's loss is NaN/inf (agreed by all ranks, so all stop together)."""
        bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(bad)
        if not bad.item():
            return None
        return (f"the {self.stage} loss became {loss.item()} at step {step + 1} (on {int(bad.item())} worker(s)); "
                f"the run stopped and kept its last good checkpoint. Lower optim.lr, raise optim.warmup_steps, "
                f"or check the data")

    def _window_metrics(self, window: torch.Tensor, seconds: float) -> dict[str, float]:
        total = window.to(self.device)
        if dist.is_initialized():
            dist.all_reduce(total)
        loss_sum, accuracy_sum, micro, tokens = total.tolist()
        metrics = {"loss": loss_sum / micro, "accuracy": accuracy_sum / micro,
                   "lr": float(self.scheduler.get_last_lr()[0]),
                   "tokens_per_s": tokens / seconds, "samples_per_s": micro * self.cfg.micro_batch / seconds}
        self.state["tokens"] += int(tokens)
        if torch.cuda.is_available() and self.cfg.scaling.use_gpu:
            metrics["gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return metrics

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Loss and accuracy on up to run.eval_batches validation batches per worker, in eval mode
        unless the stage needs its dropout (SimCSE: the noise is what makes its two views differ)."""
        if self.specifics.validate_in_eval_mode:
            self.engine.eval()
        total = torch.zeros(3, dtype=torch.float64, device=self.device)
        for i, batch in enumerate(self.validation_shard.iter_torch_batches(
                batch_size=self.cfg.micro_batch, drop_last=True, collate_fn=self.specifics.collate)):
            if i >= self.cfg.run.eval_batches:
                break
            loss, accuracy, _ = self._forward(batch, derived_seed(self.cfg.seed, 2**31, i, self.rank))
            total += torch.tensor([loss.item(), accuracy.item(), 1.0], dtype=torch.float64, device=self.device)
        self.engine.train()
        if dist.is_initialized():
            dist.all_reduce(total)
        loss_sum, accuracy_sum, batches = total.tolist()
        if not batches:
            return {}
        return {"val_loss": loss_sum / batches, "val_accuracy": accuracy_sum / batches}

    @torch.no_grad()
    def _dev_score(self) -> dict[str, float]:
        """The stage's dev retrieval (bg2vec.training.dev_score) in eval mode (no dropout): every rank
        embeds its share, the score is over all of them."""
        if self.dev_rows is None:
            return {}
        self.engine.eval()
        mine = torch.stack(self.specifics.dev_embeddings(self.engine, self.dev_rows, self.device))  # [2, rows, H]
        self.engine.train()
        if dist.is_initialized():
            gathered = [torch.empty_like(mine) for _ in range(self.world)]
            dist.all_gather(gathered, mine)
            mine = torch.cat(gathered, dim=1)
        return {"dev_score": continuation_mrr(mine[0], mine[1])}

    def _report(self, metrics: dict[str, float]) -> dict:
        return {**metrics, "step": self.state["step"], "samples": self.state["samples"],
                "epoch": self.state["epoch"]}

    def _checkpoint(self, metrics: dict[str, float]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="bg2vec-ckpt-") as directory:
            self.engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, client_state={"bg2vec": dict(self.state)},
                                        exclude_frozen_parameters=True)
            ray.train.report(self._report(metrics), checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=f"checkpoint_{self.state['step']:07d}")

    # ---------------------------------------------------------------- save
    def save(self) -> None:
        """The contract's model directory: adapter (gathered from all shards), tokenizer, config."""
        cfg = self.cfg
        state = gathered_lora_state(self.peft_model)  # collective: every rank
        if self.rank == 0:
            staging = Path(tempfile.mkdtemp(prefix="bg2vec-output-"))
            try:
                write_model_dir(staging, self.stage, cfg, state, tokenizer=self.tokenizer, family=self.family,
                                resolved=self.resolved, tiny_base=self.specifics.tiny_base,
                                start_dir=self.specifics.start_dir)
                publish_dir(staging, cfg.output)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            worker_print(f"[{self.stage}] wrote {cfg.output}")
            self.sink.close()
        if dist.is_initialized():
            dist.barrier()
