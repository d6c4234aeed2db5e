"""The contrastive-pairs stage: its batches, its checks, and real Ray Train + DeepSpeed runs on a pairs
directory written in the contract's layout (from the prepared sample's paragraphs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.config import load_config
from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.training.config import ContrastiveConfig
from bg2vec.training.data import PairCollator
from conftest import REPO, write_trained_encoder

PAIR_SCHEMA = pa.schema([("query", pa.string()), ("positive", pa.string()), ("kind", pa.string()),
                         ("page_id", pa.int64()), ("negatives", pa.list_(pa.string())), ("instruction", pa.string())])


def write_pairs(root: Path, pages: list[dict]) -> Path:
    """A pairs directory (PAIRS_CONTRACT.md) from pages: each paragraph of 80+ characters is a pair, its
    first sentence the query, the rest the positive, the next paragraph of the page its negative (none
    for a page's last paragraph); every fifth query has no instruction (""), the others the default."""
    rows = {"train": [], "validation": []}
    for page in pages:
        paragraphs = [line for line in page["text"].split("\n") if len(line) >= 80 and ". " in line]
        for i, paragraph in enumerate(paragraphs):
            query, rest = paragraph.split(". ", 1)
            rows[page["split"]].append({
                "query": query, "positive": rest, "kind": "inverse_cloze", "page_id": page["id"],
                "negatives": paragraphs[i + 1:i + 3], "instruction": "" if len(rows[page["split"]]) % 5 == 4 else None})
    files = {}
    for split, split_rows in rows.items():
        (root / "pairs" / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(split_rows, schema=PAIR_SCHEMA), root / "pairs" / split / "part-0.parquet")
        files[f"pairs/{split}"] = ["part-0.parquet"]
    manifest = {"format": "bg2vec-pairs-v1", "sources": {"data": None, "files": [], "model": None},
                "counts": {split: {"inverse_cloze": len(r)} for split, r in rows.items()}, "dropped": {},
                "files": files, "negatives": {"model": "test", "rank_window": [2, 10], "per_pair": 2}, "config": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def pairs(prepared_sample, tmp_path_factory) -> Path:
    pages = pq.read_table(prepared_sample / "pages").to_pylist()
    return write_pairs(tmp_path_factory.mktemp("pairs"), pages)


@pytest.fixture(scope="module")
def tokenizer(prepared_sample):
    return AutoTokenizer.from_pretrained(prepared_sample / "tokenizer")


@pytest.fixture(scope="module")
def mntp_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny MNTP output (random LoRA over a tiny Mistral base), as jobs/mntp.py lays it out."""
    return write_trained_encoder(tmp_path_factory.mktemp("mntp"), tokenizer, stages=("mntp",))


def config(pairs: Path, output: Path, *overrides: str, start: str) -> ContrastiveConfig:
    # 8 steps of 8 pairs over 2 workers, ZeRO-0 (auto), a checkpoint and a validation pass at 4 and 8
    return load_config(ContrastiveConfig, str(REPO / "configs/tiny/contrastive.yaml"), [
        f"pairs={pairs}", start, f"output={output}", "max_steps=8", "global_batch_size=8", "hard_negatives=2",
        "matryoshka_dims=[8, 16]", "run.checkpoint_every=4", "run.eval_every=4", "run.log_every=4",
        "run.dev_blocks=10", *overrides])


def test_pair_batches_put_each_querys_instruction_before_it_and_only_before_queries(tokenizer):
    collate = PairCollator(tokenizer, max_length=32, pooling="mean", query_instruction="Търси: ", hard_negatives=1)
    batch = {"query": np.array(["София", "Дунав", "Рила"], dtype=object),
             "positive": np.array(["столица", "река", "планина"], dtype=object),
             "negatives": np.array([["Пловдив", "Варна"], [], ["Пирин"]], dtype=object),
             "instruction": np.array([None, "", "Друго: "], dtype=object)}
    out = collate(batch)
    ids, attention, embed = out["input_ids"], out["attention_mask"], out["embed_mask"]
    assert out["is_query"].tolist() == [True] * 3 + [False] * 5  # one batch: one forward pass
    words = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("Търси: ", "Друго: ")]
    # null: the stage's instruction; "": none; a string: that one. Pooling reads the query's own tokens only.
    for row, instruction in ((0, words[0]), (1, []), (2, words[1])):
        own = ids[row][embed[row].bool()].tolist()
        assert own == tokenizer(batch["query"][row], add_special_tokens=False)["input_ids"]
        assert ids[row][1:1 + len(instruction)].tolist() == instruction  # after BOS
        assert int(attention[row].sum()) == 1 + len(instruction) + len(own)
    # passages: the 3 positives, then at most hard_negatives=1 of each pair's negatives (the second pair has none)
    passages = [tokenizer.decode(ids[row][embed[row].bool()]) for row in range(3, 8)]
    assert [p.replace(" ", "") for p in passages] == ["столица", "река", "планина", "Пловдив", "Пирин"]
    assert (attention[3:].sum(1) == embed[3:].sum(1) + 1).all()  # BOS only


def test_the_start_and_the_inputs_are_checked_before_anything_runs(pairs, mntp_dir, tmp_path):
    from bg2vec.training.launch import run_stage

    base = [f"pairs={pairs}", f"output={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match="exactly one of mntp=DIR .* and simcse=DIR"):
        load_config(ContrastiveConfig, None, [*base, f"mntp={mntp_dir}", f"simcse={mntp_dir}"])
    with pytest.raises(ConfigError, match="exactly one of mntp=DIR"):
        load_config(ContrastiveConfig, None, base)
    with pytest.raises(ConfigError, match="trains on pairs=DIR"):
        load_config(ContrastiveConfig, None, [*base, f"mntp={mntp_dir}", "data=runs/data"])
    with pytest.raises(ConfigError, match=r"kinds: \['titles'\] are not pair kinds"):
        load_config(ContrastiveConfig, None, [*base, f"mntp={mntp_dir}", "kinds=[titles]"])
    with pytest.raises(Bg2VecError, match="is not a pairs directory \\(no manifest.json\\): run jobs/pairs.py"):
        run_stage(load_config(ContrastiveConfig, None, [f"pairs={tmp_path}", f"mntp={mntp_dir}", "output=o"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(Bg2VecError, match="mntp=.* is not a trained MNTP directory"):
        run_stage(load_config(ContrastiveConfig, None, [*base, f"mntp={tmp_path / 'empty'}"]))
    with pytest.raises(Bg2VecError, match="simcse=.*: its last stage is 'mntp', not 'simcse'"):
        run_stage(load_config(ContrastiveConfig, None, [*base, f"simcse={mntp_dir}"]))
    with pytest.raises(Bg2VecError, match="holds 0 training pair\\(s\\) of kinds \\['crops'\\]"):
        run_stage(load_config(ContrastiveConfig, None, [*base, f"mntp={mntp_dir}", "kinds=[crops]"]))
    manifest = json.loads((pairs / "manifest.json").read_text())
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "manifest.json").write_text(json.dumps({**manifest, "files": {"pairs/train": ["part-0.parquet"]}}))
    with pytest.raises(Bg2VecError, match=r"lists no files for \['pairs/validation'\]"):
        run_stage(load_config(ContrastiveConfig, None, [f"pairs={incomplete}", f"mntp={mntp_dir}", "output=o"]))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_stage_trains_from_mntp_and_writes_an_encoder_with_its_prompt(ray_local, pairs, mntp_dir, tmp_path,
                                                                          capfd):
    from bg2vec.training.launch import run_stage

    buffers = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    result = run_stage(config(pairs, tmp_path / "out", start=f"mntp={mntp_dir}"))
    # DeepSpeed's CPU allreduce buffers (70 MB a rank) are removed at the end of the run (bg2vec._compat)
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= buffers
    out = tmp_path / "out"
    metrics = result["metrics"]
    assert metrics["step"] == 8 and {"loss", "accuracy", "val_loss", "dev_score"} <= metrics.keys()
    console = capfd.readouterr().out
    assert "[contrastive] step 0/8" in console and "dev_score" in console  # the untrained model's score, logged
    saved = json.loads((out / "bg2vec_config.json").read_text())
    assert [s["name"] for s in saved["stages"]] == ["mntp", "contrastive"]
    assert saved["stages"][0]["adapter"] == "stages/mntp" and saved["stages"][1]["adapter"] == "."
    hyper = saved["stages"][1]["hyperparameters"]
    assert hyper["hard_negatives"] == 2 and hyper["pairs"] == str(pairs) and "data" not in hyper
    instruction = "Намери пасаж, който отговаря на заявката:\n"
    assert saved["prompts"] == {"query": instruction} and saved["matryoshka_dims"] == [8, 16]
    assert load_file(mntp_dir / "adapter_model.safetensors").keys() == \
        load_file(out / "stages" / "mntp" / "adapter_model.safetensors").keys()
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it moved

    model = Bg2Vec.from_pretrained(out)
    assert model.config.prompts["query"] == instruction
    texts = ["Коя е столицата на България", "София е столицата на България."]
    plain, instructed = model.encode(texts), model.encode(texts, instruction=instruction)
    assert plain.shape == (2, 32) and np.isfinite(plain).all()
    assert np.abs(plain - instructed).max() > 1e-3  # bidirectional: the instruction shapes the query's tokens
    before = Bg2Vec.from_pretrained(mntp_dir).encode(texts)
    assert np.abs(plain - before).max() > 1e-4  # the new stage changed the encoder


@pytest.mark.slow
def test_the_stage_continues_a_simcse_encoder(ray_local, pairs, tokenizer, tmp_path):
    from bg2vec.training.launch import run_stage

    simcse = write_trained_encoder(tmp_path / "simcse", tokenizer)
    out = tmp_path / "out"
    run_stage(config(pairs, out, "max_steps=2", "run.dev_blocks=0", "run.eval_every=0", "query_instruction=",
                     "matryoshka_dims=[]", "mntp=null", start=f"simcse={simcse}"))
    saved = json.loads((out / "bg2vec_config.json").read_text())
    assert [(s["name"], s["adapter"]) for s in saved["stages"]] == [
        ("mntp", "stages/mntp"), ("simcse", "stages/simcse"), ("contrastive", ".")]
    assert saved["prompts"] == {} and saved["matryoshka_dims"] == []
    for name, source in (("mntp", simcse / "stages" / "mntp"), ("simcse", simcse)):
        for key, value in load_file(source / "adapter_model.safetensors").items():
            torch.testing.assert_close(load_file(out / "stages" / name / "adapter_model.safetensors")[key], value)
    assert np.isfinite(Bg2Vec.from_pretrained(out).encode(["София"])).all()


def _popen(args: list[str]) -> subprocess.Popen:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "jobs/contrastive.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_an_interrupted_run_resumed_ends_with_the_uninterrupted_runs_adapter(ray_local, pairs, mntp_dir, tmp_path,
                                                                            capfd):
    """One worker (the data order is then fixed), ZeRO-3 (sharded checkpoints; two forward passes a step)."""
    from bg2vec.training.launch import run_stage

    short = ["scaling.num_workers=1", "zero_stage=3", "run.eval_every=0", "run.dev_blocks=0", "max_steps=8",
             "run.checkpoint_every=2"]
    run_stage(config(pairs, tmp_path / "whole", *short, start=f"mntp={mntp_dir}"))
    resumed = tmp_path / "resumed"
    args = ["--config", "configs/tiny/contrastive.yaml", f"pairs={pairs}", f"mntp={mntp_dir}", f"output={resumed}",
            "global_batch_size=8", "hard_negatives=2", "matryoshka_dims=[8, 16]", *short]
    first = _popen(args)
    deadline = time.time() + 300
    snapshot = tmp_path / "resumed.runs" / "contrastive" / "checkpoint_manager_snapshot.json"
    # killed once Ray Train has registered the step-2 checkpoint (its files alone are not yet a checkpoint)
    while not (snapshot.is_file() and "checkpoint_0000002" in snapshot.read_text()):
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint at step 2"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies; its workers go with it
    first.wait()
    assert not resumed.exists()
    time.sleep(3)
    capfd.readouterr()
    result = run_stage(config(pairs, resumed, *short, start=f"mntp={mntp_dir}"))
    assert result["metrics"]["step"] == 8
    printed = capfd.readouterr().out
    step = re.search(r"\[contrastive\] resumed from \S+ at step (\d+)", printed)
    assert step and 2 <= int(step.group(1)) < 8, printed[-3000:]
    whole = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    again = load_file(resumed / "adapter_model.safetensors")
    assert whole.keys() == again.keys()
    for key, value in whole.items():  # the same data, steps and optimizer state: equal up to float rounding
        torch.testing.assert_close(again[key], value, rtol=1e-4, atol=1e-6)
