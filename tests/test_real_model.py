"""Real pretrained weights: Gemma-3-270M (packaged:gemma-3-270m), from the model to the whole pipeline.

The fast tests check the packaged-model cache itself; the slow ones load the real model (materialised
once into ~/.cache/bg2vec/models, or $BG2VEC_CACHE/models) and run the gemma3-270m preset end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from bg2vec import Bg2Vec
from bg2vec.errors import Bg2VecError
from bg2vec.modeling import packaged
from conftest import REPO

TEXTS = ["Столицата на България е София.", "Рила е най-високата планина на Балканския полуостров.",
         "Котката спи на дивана."]


def test_other_names_pass_through_and_unknown_packaged_names_are_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("BG2VEC_CACHE", str(tmp_path))
    assert packaged.resolve("INSAIT-Institute/BgGPT-7B-Instruct-v0.2") == "INSAIT-Institute/BgGPT-7B-Instruct-v0.2"
    assert packaged.resolve(str(tmp_path)) == str(tmp_path)
    with pytest.raises(Bg2VecError, match="packaged:llama-9000: no such packaged model; known: packaged:gemma-3-270m"):
        packaged.resolve("packaged:llama-9000")


def test_a_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("BG2VEC_CACHE", str(tmp_path))
    monkeypatch.setitem(packaged.PACKAGED, "gemma-3-270m",
                        packaged.PackagedModel(module="no_such_module_xyz", extra="gemma3", license="L", upstream="U"))
    with pytest.raises(Bg2VecError, match=r'needs the package no_such_module_xyz: pip install -e "\.\[gemma3\]"'):
        packaged.resolve("packaged:gemma-3-270m")
    assert not (tmp_path / "models" / "gemma-3-270m").exists()


def test_concurrent_workers_write_the_folder_once_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BG2VEC_CACHE", str(tmp_path))
    calls = []

    def write(package, out):
        calls.append(out)
        time.sleep(0.3)  # the other thread is waiting on the lock meanwhile
        (out / "model.safetensors").write_bytes(b"weights")
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(packaged, "_write_folder", write)
    results = []
    threads = [threading.Thread(target=lambda: results.append(packaged.materialize("gemma-3-270m")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = tmp_path / "models" / "gemma-3-270m"
    assert len(calls) == 1 and results == [target, target]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".gemma-3-270m-")] == []  # no staging left

    def broken(package, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setenv("BG2VEC_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(packaged, "_write_folder", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        packaged.materialize("gemma-3-270m")
    assert not (tmp_path / "other" / "models" / "gemma-3-270m").exists()
    assert [p.name for p in (tmp_path / "other" / "models").iterdir() if not p.name.endswith(".lock")] == []


@pytest.fixture(scope="module")
def gemma_dir():
    return packaged.materialize("gemma-3-270m")


@pytest.mark.slow
def test_the_packaged_model_is_gemma3_270m_with_its_tokenizer(gemma_dir):
    config = json.loads((gemma_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == \
        ("gemma3_text", 18, 640, 262144)
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    assert tokenizer("София", add_special_tokens=True)["input_ids"][0] == tokenizer.bos_token_id == 2
    assert len(tokenizer("_", add_special_tokens=False)["input_ids"]) == 1  # mask_token: blank works


@pytest.mark.slow
def test_real_model_is_bidirectional_by_perturbation(gemma_dir):
    encoder = Bg2Vec.from_pretrained("packaged:gemma-3-270m", dtype=torch.float32, device="cpu")
    assert encoder.config.base_model == "packaged:gemma-3-270m"  # the portable name, not the cache path
    tok = encoder.tokenizer
    a = tok(["Столицата на България е София."], return_tensors="pt")
    b = {k: v.clone() for k, v in a.items()}
    b["input_ids"][0, -2] = tok("Варна", add_special_tokens=False)["input_ids"][0]  # another last word

    def first_states(model):
        with torch.no_grad():
            return [model(**x).last_hidden_state[0, 1] for x in (a, b)]

    from bg2vec.modeling import make_causal

    bi = first_states(encoder.model)
    assert (bi[0] - bi[1]).abs().max() > 1e-3  # the last words reach the first token
    causal = first_states(make_causal(encoder.model))
    torch.testing.assert_close(causal[0], causal[1], atol=1e-5, rtol=0)  # and do not when causal


@pytest.mark.slow
def test_encode_equals_a_hand_written_transformers_forward_with_mean_pooling(gemma_dir):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    encoder = Bg2Vec.from_pretrained("packaged:gemma-3-270m", dtype=torch.float32, device="cpu")
    got = encoder.encode(TEXTS, batch_size=2, normalize=False)
    config = AutoConfig.from_pretrained(gemma_dir)
    config.is_causal = False  # transformers' public switch to bidirectional attention
    hf = AutoModel.from_pretrained(gemma_dir, config=config, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    for i, text in enumerate(TEXTS):
        ids = tokenizer(text, return_tensors="pt")  # <bos> + the text
        with torch.no_grad():
            hidden = hf(**ids).last_hidden_state[0]
        expected = hidden[1:].mean(0).numpy()  # mean over the text's tokens, not <bos>
        np.testing.assert_allclose(got[i], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert got.shape == (3, 640)


@pytest.mark.slow
@pytest.mark.timeout(2700)  # about 16 minutes alone on 2 cores with the base's own baselines, more beside others
def test_gemma3_preset_pipeline_end_to_end(gemma_dir, tmp_path):
    """The gemma3-270m preset on the sample dump, shortened: MNTP lowers the validation loss on real
    weights, SimCSE learns to pair dropout views, the contrastive stage on the mined pairs (hard negatives
    by the MNTP encoder) raises its dev score, and the report compares every encoder with e5."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BG2VEC_VERBOSE")}
    # MNTP under ZeRO-3: real weights sharded while loading (HfDeepSpeedConfig); SimCSE on auto (ZeRO-0)
    overrides = ["mntp.zero_stage=3",
                 "mntp.max_steps=6", "mntp.run.eval_every=6", "mntp.run.checkpoint_every=6", "mntp.run.log_every=3",
                 "mntp.optim.warmup_steps=1", "mntp.optim.lr=3e-4",
                 "simcse.max_steps=4", "simcse.run.eval_every=4", "simcse.run.checkpoint_every=4",
                 "simcse.run.log_every=2", "simcse.optim.warmup_steps=1",
                 "pairs.max_pairs_per_page=2", "pairs.max_positive_chars=600",
                 "contrastive.max_steps=4", "contrastive.run.eval_every=4", "contrastive.run.checkpoint_every=4",
                 "contrastive.run.log_every=2", "contrastive.optim.warmup_steps=1", "contrastive.optim.lr=3e-4",
                 # the base model's own rows (causal-last, causal-mean, bidirectional) are bench/replicate.py's
                 "evaluate.baselines=[mntp]", "evaluate.max_length=128", "pairs.negatives.max_tokens=64"]
    done = subprocess.run([sys.executable, "jobs/pipeline.py", "--preset", "gemma3-270m", f"output={out}", *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=2600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = [ln for ln in done.stdout.splitlines() if "[mntp] step " in ln]
    start, end = lines[0], lines[-1]

    def value(line, key):
        parts = line.split()
        return float(parts[parts.index(key) + 1])

    assert "step 0/6" in start and "step 6/6" in end
    assert "[simcse] zero_stage auto -> ZeRO-0" in done.stdout and "[mntp] zero_stage" not in done.stdout
    assert value(end, "val_loss") < value(start, "val_loss") - 0.05, (start, end)
    simcse = [ln for ln in done.stdout.splitlines() if "[simcse] step " in ln and " accuracy " in ln]
    assert value(simcse[-1], "accuracy") > 2 / 16, simcse  # above chance at 8 texts x 2 views per worker
    pairs = json.loads((out / "pairs" / "manifest.json").read_text())
    assert pairs["negatives"]["pairs_with_negatives"]["train"] > 0
    contrastive = [ln for ln in done.stdout.splitlines() if "[contrastive] step " in ln and "dev_score" in ln]
    assert "step 0/4" in contrastive[0] and "step 4/4" in contrastive[-1]
    assert value(contrastive[-1], "dev_score") > value(contrastive[0], "dev_score"), contrastive
    results = json.loads((out / "eval" / "results.json").read_text())
    assert list(results) == ["MNTP", "MNTP + pairs", "MNTP + SimCSE", "multilingual-e5-small"]
    config = json.loads((out / "contrastive" / "bg2vec_config.json").read_text())
    assert config["base_model"] == "packaged:gemma-3-270m" and [s["name"] for s in config["stages"]] == \
        ["mntp", "contrastive"]
    assert config["prompts"]["query"] and config["matryoshka_dims"] == [64, 128, 256]
    trained = Bg2Vec.from_pretrained(out / "contrastive", dtype=torch.float32, device="cpu").encode(TEXTS)
    base = Bg2Vec.from_pretrained("packaged:gemma-3-270m", dtype=torch.float32, device="cpu").encode(TEXTS)
    assert trained.shape == base.shape == (3, 640) and np.isfinite(trained).all()
    assert np.abs(trained - base).max() > 1e-2
    manifest = json.loads((out / "embeddings" / "manifest.json").read_text())
    assert manifest["dimension"] == 640
