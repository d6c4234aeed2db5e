"""Training components without Ray: batch arithmetic, DeepSpeed config, adapter layout, texts, CPU settings."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.modeling.tiny import tiny_config
from bg2vec.training.adapters import gathered_lora_state, save_adapter
from bg2vec.training.config import LoraSettings, MNTPConfig, SimCSEConfig
from bg2vec.training.data import training_texts
from bg2vec.training.deepspeed_config import deepspeed_config


@pytest.mark.parametrize("workers, micro, expected", [(1, None, (32, 1)), (8, None, (4, 1)), (8, 2, (2, 2)),
                                                      (4, 1, (1, 8))])
def test_global_batch_is_fixed_and_the_rest_derived(workers, micro, expected):
    cfg = MNTPConfig(data="d", output="o", global_batch_size=32, micro_batch_size=micro, zero_stage=3)
    cfg.scaling.num_workers = workers
    assert (cfg.micro_batch, cfg.gradient_accumulation) == expected
    ds = deepspeed_config(cfg, bf16=False)
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * workers
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is False


def test_batch_sizes_that_do_not_divide_are_refused():
    from bg2vec.config import load_config

    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size"):
        load_config(MNTPConfig, None, ["data=d", "output=o", "global_batch_size=32", "scaling.num_workers=3"])
    with pytest.raises(ConfigError, match="mntp is empty"):
        load_config(SimCSEConfig, None, ["data=d", "output=o"])


def test_offload_uses_deepspeeds_optimizer():
    cfg = MNTPConfig(data="d", output="o", offload_optimizer=True, zero_stage=3)
    ds = deepspeed_config(cfg, bf16=True)
    assert ds["optimizer"]["type"] == "AdamW" and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "optimizer" not in deepspeed_config(MNTPConfig(data="d", output="o", zero_stage=2), bf16=True)
    with pytest.raises(ValueError, match="decided on the workers"):
        deepspeed_config(MNTPConfig(data="d", output="o"), bf16=True)  # auto is resolved before this


def test_mntp_adapter_is_saved_for_the_bare_model_and_peft_loads_it(tmp_path):
    """MNTP trains *ForCausalLM; the saved adapter must apply to AutoModel with the same effect."""
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    AutoModelForCausalLM.from_config(tiny_config("mistral", 97)).save_pretrained(base_dir)
    causal = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(causal, LoraConfig(r=4, lora_alpha=8, target_modules=lora.target_modules))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # as if trained (peft initialises B to zero)
    state = gathered_lora_state(peft_model)
    assert state and all(k.startswith("base_model.model.layers.") and ".default." not in k for k in state)
    save_adapter(state, lora, str(base_dir), tmp_path / "adapter")
    assert load_file(tmp_path / "adapter" / "adapter_model.safetensors").keys() == state.keys()

    ids = torch.tensor([[1, 5, 9, 23, 42, 7]])
    expected = peft_model.merge_and_unload().model(input_ids=ids).last_hidden_state
    bare = PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), tmp_path / "adapter").merge_and_unload()
    torch.testing.assert_close(bare(input_ids=ids).last_hidden_state, expected)


def test_an_empty_adapter_is_refused():
    model = get_peft_model(AutoModel.from_config(tiny_config("llama", 50)),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.empty(0)  # what a ZeRO-3 shard looks like when read without gathering
    with pytest.raises(Bg2VecError, match="empty LoRA adapter"):
        gathered_lora_state(model)


def test_simcse_texts_are_paragraphs_of_one_split():
    long_a, long_b = "А" * 90, "Б" * 85
    batch = {"text": np.array([f"Заглавие\n{long_a}\nкратко\n{long_b}", f"{long_a} друго"], dtype=object),
             "split": np.array(["train", "validation"], dtype=object)}
    assert list(training_texts(batch, "train", "paragraph", 80)["text"]) == [long_a, long_b]
    assert list(training_texts(batch, "validation", "paragraph", 80)["text"]) == [f"{long_a} друго"]
    assert list(training_texts(batch, "train", "article", 80)["text"]) == [batch["text"][0]]
    assert training_texts(batch, "train", "paragraph", 1000)["text"].shape == (0,)


def test_a_failure_left_by_the_workers_is_read_once(tmp_path):
    from bg2vec.training.output import take_failure, write_failure

    run_dir = str(tmp_path / "runs" / "mntp")
    assert take_failure(run_dir) is None
    write_failure(run_dir, "the mntp loss became nan at step 3")
    assert take_failure(run_dir) == "the mntp loss became nan at step 3"
    assert take_failure(run_dir) is None  # removed: a rerun of the same name starts clean


def test_dev_score_is_the_mrr_of_each_first_half_finding_its_own_second_half():
    from bg2vec.training.dev_score import continuation_mrr, halves

    blocks = torch.arange(10).reshape(2, 5)
    # the first halves, then the second halves (an odd length leaves the middle token out)
    assert halves(blocks).tolist() == [[0, 1], [5, 6], [2, 3], [7, 8]]
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    second = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, -1.0]])
    # queries 0 and 1 rank their own half first; query 2's own half is the least similar of the three
    assert continuation_mrr(first, second) == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert continuation_mrr(first * 5, second * 0.1) == pytest.approx(7 / 9)  # cosine: scale does not matter
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert continuation_mrr(same, same) == 1.0  # a tie with the right half counts in its favour


def _nonzero_in_fresh_thread(flush: bool) -> int:
    """Subnormals left after arithmetic on 2 torch threads started in a fresh Python thread."""
    from bg2vec.training.model import flush_denormals

    found = []

    def work():
        if flush:
            flush_denormals()
        subnormal = torch.full((4_000_000,), 1e-40)  # large enough to be split over both threads
        found.append(int((subnormal * 1.0).count_nonzero()))

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(threads)
    return found[0]


def test_flushed_denormals_are_zero_on_every_torch_thread():
    assert _nonzero_in_fresh_thread(flush=False) == 4_000_000  # the default: subnormals are kept
    assert _nonzero_in_fresh_thread(flush=True) == 0  # both halves: the compute threads inherit the setting


def test_deepspeed_counts_cpu_devices_without_a_subprocess_once_told(monkeypatch):
    import deepspeed.utils.numa
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    from bg2vec._compat import deepspeed_cpu_local_size

    spawned = []
    monkeypatch.setattr(deepspeed.utils.numa.subprocess, "check_output",
                        lambda args, **kw: spawned.append(args) or b"available: 1 nodes (0)\nnode 0 cpus: 0 1\n")
    with mock.patch.dict(os.environ):
        os.environ.pop("LOCAL_SIZE", None)
        assert CPU_Accelerator().device_count() == 1 and spawned == [["numactl", "--hardware"]]  # the premise
        deepspeed_cpu_local_size(2)
        assert CPU_Accelerator().device_count() == 2 and len(spawned) == 1
        deepspeed_cpu_local_size(4)  # a LOCAL_SIZE already there (DeepSpeed's own launcher) is kept
        assert os.environ["LOCAL_SIZE"] == "2"


def test_auto_zero_stage_on_the_workers_uses_the_planner_and_the_device_memory(monkeypatch):
    from bg2vec.planning import architecture_of, memory
    from bg2vec.training import zero_stage
    from bg2vec.training.zero_stage import plan_config, resolve_zero_stage

    config = tiny_config("mistral", 97, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    cfg = MNTPConfig(data="d", output="o", global_batch_size=8, mask_ratio=0.3)
    cfg.scaling.num_workers = 2
    kwargs = {"seq_len": 128, "bf16": False, "world": 2, "local_world": 2, "device": torch.device("cpu")}
    # the planner's view of the run: the stage's shapes, the worker layout, no CUDA overhead on CPU
    planned = plan_config(cfg, config, seq_len=128, bf16=False, world=2, local_world=2, use_gpu=False,
                          config_dir=Path(tempfile.mkdtemp()))
    assert (planned.stage, planned.seq_len, planned.micro_batch, planned.mask_ratio, planned.gpus) == \
        ("mntp", 128, 4, 0.3, 2)
    assert (planned.dtype, planned.lora_rank, planned.overhead_gib) == ("fp32", cfg.lora.r, 0.0)
    plain, sharded = (memory(dataclasses.replace(planned, zero_stage=s), architecture_of(config)).total for s in (0, 2))
    assert sharded < plain  # ZeRO-2 shards the adapters' gradients and Adam states over the 2 ranks
    monkeypatch.setattr(zero_stage, "device_capacity", lambda *a: int(plain / 0.85) + 1)
    stage, why = resolve_zero_stage(cfg, config, **kwargs)
    assert stage == 0 and why.startswith("zero_stage auto -> ZeRO-0: the replicated weights fit")
    monkeypatch.setattr(zero_stage, "device_capacity", lambda *a: int(plain / 0.85) - 1)
    stage, why = resolve_zero_stage(cfg, config, **kwargs)
    assert stage == 2 and "once the adapters' gradients and Adam states are sharded" in why
    monkeypatch.setattr(zero_stage, "device_capacity", lambda *a: int(sharded / 0.85) - 1)
    assert resolve_zero_stage(cfg, config, **kwargs)[0] == 3
    # the host's memory shared by the node's ranks on CPU; a given stage is kept
    monkeypatch.undo()
    assert zero_stage.device_capacity(False, torch.device("cpu"), 2) == \
        os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    assert resolve_zero_stage(dataclasses.replace(cfg, zero_stage=3), config, **kwargs) == (3, "ZeRO-3 as configured")


def test_the_user_s_data_context_reaches_the_training_shards(ray_local):
    """Ray Train's ingest options come from the driver's DataContext (no options of ours replace them):
    a user's resource limit and preserve_order reach the datasets the workers read."""
    import ray.data
    from ray.data import DataContext, ExecutionOptions, ExecutionResources

    from bg2vec.training.launch import ingest_config

    context = DataContext.get_current()
    saved = context.execution_options
    context.execution_options = ExecutionOptions(resource_limits=ExecutionResources(cpu=1), preserve_order=True)
    try:
        shards = ingest_config().configure({"train": ray.data.range(8), "dev": ray.data.range(4)}, world_size=2,
                                           worker_handles=None, worker_node_ids=None)
    finally:
        context.execution_options = saved
    assert [sorted(shards) for shards in shards] == [["dev", "train"]] * 2
    for worker in shards:
        options = worker["dev"]._base_dataset.context.execution_options  # dev: the whole set on every worker
        assert options.preserve_order and options.resource_limits.cpu == 1
        assert [row["id"] for row in worker["dev"].iter_rows()] == [0, 1, 2, 3]
    with ThreadPoolExecutor(2) as pool:  # the split shards are read together, as the workers do
        train = list(pool.map(lambda worker: [row["id"] for row in worker["train"].iter_rows()], shards))
    assert sorted(train[0] + train[1]) == list(range(8)) and len(train[0]) == 4
