"""Pooling, inputs, dropout and the Bg2Vec encoder, on a tiny Mistral with a real trained tokenizer."""

from __future__ import annotations

import json
from copy import deepcopy

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel

from bg2vec import Bg2Vec
from bg2vec.data.tokens.tokenization import train_bpe_tokenizer
from bg2vec.errors import Bg2VecError
from bg2vec.modeling import make_bidirectional, pool
from bg2vec.modeling.dropout import set_dropout
from bg2vec.modeling.encoder import CONFIG_NAME, EncoderConfig, write_encoder_files
from bg2vec.modeling.inputs import build_sequences, collate
from bg2vec.modeling.tiny import tiny_config

TEXTS = ["София е столицата на България.", "Рила е най-високата планина.", "Кирилицата е азбука.",
         "Черно море е вътрешно море между Европа и Азия.", "Мартеницата се носи през март.", "Да."]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(iter(TEXTS * 20), vocab_size=400)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-mistral")
    AutoModel.from_config(tiny_config("mistral", len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def manual_mean(model, tokenizer, text: str, prefix: list[int] | None = None) -> torch.Tensor:
    """One text alone: run the model, average the text's own token states."""
    prefix = [tokenizer.bos_token_id] + (prefix or [])
    ids = prefix + tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return hidden[len(prefix):].mean(0)


def test_pooling_modes_by_hand():
    hidden = torch.tensor([[[1., 10.], [2., 20.], [3., 30.], [4., 40.]],
                           [[5., 50.], [6., 60.], [7., 70.], [8., 80.]]])
    attention = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right- and left-padded
    embed = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])  # e.g. token 0 is BOS / an instruction
    torch.testing.assert_close(pool(hidden, attention, embed, "mean"), torch.tensor([[2.5, 25.], [7.5, 75.]]))
    # weights 1, 2 on the two text tokens
    torch.testing.assert_close(pool(hidden, attention, embed, "weighted_mean"),
                               torch.tensor([[(2 + 2 * 3) / 3, (20 + 2 * 30) / 3],
                                             [(7 + 2 * 8) / 3, (70 + 2 * 80) / 3]]))
    torch.testing.assert_close(pool(hidden, attention, embed, "last"), torch.tensor([[3., 30.], [8., 80.]]))
    torch.testing.assert_close(pool(hidden, attention, embed, "bos"), torch.tensor([[1., 10.], [6., 60.]]))
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(hidden, attention, embed, "max")


def test_sequences_mark_text_tokens_and_truncate_only_text(tokenizer):
    instruction = "Намери подобен текст:"
    inst = tokenizer(instruction, add_special_tokens=False)["input_ids"]
    (seq,) = build_sequences(tokenizer, [TEXTS[3]], instruction=instruction, max_length=len(inst) + 6,
                             add_bos=True, add_eos=True)
    assert seq.ids[0] == tokenizer.bos_token_id and seq.ids[1:1 + len(inst)] == inst
    assert seq.ids[-1] == tokenizer.eos_token_id and len(seq.ids) == len(inst) + 6
    assert (seq.start, seq.end) == (1 + len(inst), len(inst) + 5)  # four text tokens survive truncation
    with pytest.raises(ValueError, match="leaves no room"):
        build_sequences(tokenizer, ["x"], instruction=instruction, max_length=len(inst) + 2, add_bos=True, add_eos=True)
    batch = collate(build_sequences(tokenizer, TEXTS[:2], instruction=None, max_length=64, add_bos=True,
                                    add_eos=False), pad_id=0)
    lengths = batch["attention_mask"].sum(1)
    assert batch["embed_mask"].sum(1).tolist() == (lengths - 1).tolist()  # all but BOS
    assert batch["position_ids"][0, : lengths[0]].tolist() == list(range(lengths[0]))


def test_encode_values_shapes_and_order(base_dir, tokenizer):
    encoder = Bg2Vec.from_pretrained(base_dir)
    assert (encoder.config.bidirectional, encoder.config.pooling, encoder.config.family) == (True, "mean", "mistral")
    emb = encoder.encode(TEXTS, batch_size=4)
    assert emb.shape == (len(TEXTS), 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    raw = encoder.encode(TEXTS, batch_size=3, normalize=False)
    for i, text in enumerate(TEXTS):  # batched by length, padded, reordered: still each text's own vector
        np.testing.assert_allclose(raw[i], manual_mean(encoder.model, tokenizer, text).numpy(), atol=1e-5)
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=1), emb, atol=1e-5)
    assert encoder.encode([]).shape == (0, 32)


def test_instruction_is_read_but_not_pooled(base_dir, tokenizer):
    encoder = Bg2Vec.from_pretrained(base_dir)
    instruction = "Намери подобен текст:"
    with_instruction = encoder.encode(TEXTS[:2], instruction=instruction, normalize=False)
    inst = tokenizer(instruction, add_special_tokens=False)["input_ids"]
    for i in range(2):
        np.testing.assert_allclose(with_instruction[i], manual_mean(encoder.model, tokenizer, TEXTS[i], inst).numpy(),
                                   atol=1e-5)
    assert not np.allclose(with_instruction, encoder.encode(TEXTS[:2], normalize=False), atol=1e-4)


def test_truncation_to_max_length(base_dir, tokenizer):
    encoder = Bg2Vec.from_pretrained(base_dir, max_length=8)
    long_text = " ".join(TEXTS)
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"][:7]  # BOS + 7 text tokens
    with torch.no_grad():
        hidden = encoder.model(input_ids=torch.tensor([[tokenizer.bos_token_id, *ids]])).last_hidden_state[0]
    np.testing.assert_allclose(encoder.encode([long_text], normalize=False)[0], hidden[1:].mean(0).numpy(), atol=1e-5)


def test_last_token_pooling_reads_the_appended_eos(base_dir, tokenizer):
    encoder = Bg2Vec.from_pretrained(base_dir, pooling="last", bidirectional=False)
    ids = [tokenizer.bos_token_id, *tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    with torch.no_grad():
        last = encoder.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    np.testing.assert_allclose(encoder.encode(TEXTS[:3], normalize=False)[0], last.numpy(), atol=1e-5)


def test_causal_and_bidirectional_differ(base_dir):
    bidirectional = Bg2Vec.from_pretrained(base_dir).encode(TEXTS)
    causal = Bg2Vec.from_pretrained(base_dir, bidirectional=False).encode(TEXTS)
    assert not np.allclose(bidirectional, causal, atol=1e-3)


def test_mteb_protocol_arguments(base_dir):
    encoder = Bg2Vec.from_pretrained(base_dir)
    expected = encoder.encode(TEXTS)
    np.testing.assert_allclose(encoder.encode(TEXTS, task_name="SIB200Classification", prompt_type="query",
                                              prompt_name=None, batch_size=2), expected, atol=1e-6)
    loader = torch.utils.data.DataLoader([{"text": t} for t in TEXTS], batch_size=4)  # MTEB 2's input
    np.testing.assert_allclose(encoder.encode(loader, task_metadata=None, hf_split="test"), expected, atol=1e-6)
    np.testing.assert_allclose(encoder.encode(TEXTS[0]), expected[:1], atol=1e-6)


def lora(model, seed):
    torch.manual_seed(seed)  # init_lora_weights=False: a random, non-zero update to see
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))


def test_trained_directory_round_trip(base_dir, tokenizer, tmp_path):
    trained = tmp_path / "simcse"
    # stage 1 (MNTP) adapter, merged; stage 2 (SimCSE) adapter on top of the merged model
    first = lora(AutoModel.from_pretrained(base_dir), seed=1)
    first.save_pretrained(trained / "stages" / "mntp")
    mntp_reference = make_bidirectional(deepcopy(first).merge_and_unload()).eval()
    second = lora(first.merge_and_unload(), seed=2)
    second.save_pretrained(trained)
    reference = make_bidirectional(second.merge_and_unload()).eval()
    config = EncoderConfig(base_model=str(base_dir), family="mistral", stages=[
        {"name": "mntp", "adapter": "stages/mntp", "hyperparameters": {"mask_ratio": 0.8}},
        {"name": "simcse", "adapter": ".", "hyperparameters": {"temperature": 0.05}}])
    write_encoder_files(trained, tokenizer, config)
    assert {p.name for p in trained.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                    CONFIG_NAME, "tokenizer.json", "stages"}
    assert not list(trained.rglob("*.bin")) and not list(trained.rglob("*.pt"))  # safetensors only

    encoder = Bg2Vec.from_pretrained(trained)
    for text in TEXTS:
        np.testing.assert_allclose(encoder.encode([text], normalize=False)[0],
                                   manual_mean(reference, tokenizer, text).numpy(), atol=1e-5)
    assert not np.allclose(encoder.encode(TEXTS), Bg2Vec.from_pretrained(base_dir).encode(TEXTS), atol=1e-3)
    # up_to_stage: the MNTP encoder inside the SimCSE directory (a view: it refuses to be saved as the whole)
    mntp_only = Bg2Vec.from_pretrained(trained, up_to_stage="mntp")
    np.testing.assert_allclose(mntp_only.encode(TEXTS[:1], normalize=False)[0],
                               manual_mean(mntp_reference, tokenizer, TEXTS[0]).numpy(), atol=1e-5)
    with pytest.raises(Bg2VecError, match="cannot be saved"):
        mntp_only.save(tmp_path / "view")
    with pytest.raises(Bg2VecError, match="up_to_stage='tune' is not one of them"):
        Bg2Vec.from_pretrained(trained, up_to_stage="tune")
    # peft itself reads the top adapter
    assert isinstance(PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), trained), PeftModel)
    # save() copies the adapters: the copy encodes identically
    encoder.save(tmp_path / "copy")
    copy = Bg2Vec.from_pretrained(tmp_path / "copy")
    np.testing.assert_allclose(copy.encode(TEXTS), encoder.encode(TEXTS), atol=1e-6)
    saved = json.loads((tmp_path / "copy" / CONFIG_NAME).read_text())
    assert saved["stages"][1]["hyperparameters"] == {"temperature": 0.05} and saved["bidirectional"] is True


def test_untrained_save_and_bad_directories(base_dir, tmp_path):
    encoder = Bg2Vec.from_pretrained(base_dir, pooling="weighted_mean")
    encoder.save(tmp_path / "plain")
    reloaded = Bg2Vec.from_pretrained(tmp_path / "plain")
    assert reloaded.config.pooling == "weighted_mean"
    np.testing.assert_allclose(reloaded.encode(TEXTS), encoder.encode(TEXTS), atol=1e-6)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG_NAME).write_text(json.dumps({"format": "other", "base_model": "x"}))
    with pytest.raises(Bg2VecError, match="is not a bg2vec-encoder-v1 file"):
        Bg2Vec.from_pretrained(tmp_path / "bad")
    with pytest.raises(Bg2VecError, match="pooling='max'"):
        Bg2Vec.from_pretrained(base_dir, pooling="max")
    with pytest.raises(Bg2VecError, match="cannot load"):
        Bg2Vec.from_pretrained(tmp_path / "missing")


def test_dropout_gives_two_views_only_in_training(base_dir):
    model = make_bidirectional(AutoModel.from_pretrained(base_dir))
    ids = torch.randint(3, 300, (2, 10))
    set_dropout(model, attention=0.3, hidden=0.3).train()
    assert not torch.allclose(model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)
    model.eval()
    assert torch.equal(model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)
    set_dropout(model, attention=0.0, hidden=0.0).train()  # replaces, does not stack
    assert torch.equal(model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)
    set_dropout(model, attention=0.0, hidden=0.5)
    hooked = [name for name, m in model.named_modules() if hasattr(m, "_bg2vec_dropout_hook")]
    assert hooked == ["layers.0.self_attn", "layers.0.mlp", "layers.1.self_attn", "layers.1.mlp"]  # sublayers
