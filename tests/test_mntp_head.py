"""MaskedNextTokenModel (LM head only where scored, chunked cross-entropy) == the full computation."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from bg2vec.modeling.tiny import tiny_config
from bg2vec.objectives.mntp import MaskedNextTokenModel, MNTPMasker, mntp_loss_and_accuracy


def causal_lm(family: str, vocab: int = 300, **overrides):
    torch.manual_seed(0)
    config = tiny_config(family, vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, **overrides)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")


def lora(model):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, config)


def batch(vocab: int, ratio: float = 0.2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (4, 24), generator=g)
    return MNTPMasker(mask_token_id=3, vocab_size=vocab, special_ids=(0, 1, 2), mask_ratio=ratio)(ids, g)


def loss_and_grads(fn, model):
    loss, accuracy = fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), accuracy, grads


@pytest.mark.parametrize("family,overrides", [("mistral", {}), ("gemma3_text", {}),
                                              ("gemma2", {"final_logit_softcapping": 5.0})])
@pytest.mark.parametrize("chunk_rows", [1, 7, 4096])
def test_equals_the_full_computation_with_lora(family, overrides, chunk_rows):
    model = lora(causal_lm(family, **overrides))
    inputs, labels = batch(300)
    wrapped = MaskedNextTokenModel(model, chunk_rows=chunk_rows)
    ref_loss, ref_acc, ref_grads = loss_and_grads(
        lambda: mntp_loss_and_accuracy(model(input_ids=inputs).logits, labels), model)
    loss, acc, grads = loss_and_grads(lambda: wrapped(inputs, labels), model)
    assert ref_loss.item() > 1.0 and 0.0 <= ref_acc.item() <= 1.0
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acc, ref_acc, atol=1e-6, rtol=0)
    assert set(grads) == set(ref_grads) and len(grads) == 8  # lora_A/B of q, v in 2 layers
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4)
        assert grads[name].abs().sum() > 0


def test_accuracy_counts_correct_predictions():
    """A head set to point at each scored row's target: accuracy near 1 (rows sharing a target keep
    the last one's direction), and exactly the reference's."""
    model = causal_lm("mistral", tie_word_embeddings=False)
    inputs, labels = batch(300, ratio=0.5)
    wrapped = MaskedNextTokenModel(model)
    with torch.no_grad():  # make the head put a huge logit on each row's target: hidden -> one-hot rows
        hidden = wrapped(inputs)
        rows = hidden[:, :-1][labels[:, 1:] != -100]
        targets = labels[:, 1:][labels[:, 1:] != -100]
        weight = model.get_output_embeddings().weight
        weight[targets] = 50 * rows / rows.norm(dim=-1, keepdim=True)
    for p in model.parameters():
        p.requires_grad_(False)
    loss, acc = wrapped(inputs, labels)
    ref_loss, ref_acc = mntp_loss_and_accuracy(model(input_ids=inputs).logits, labels)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert acc.item() == ref_acc.item() and acc.item() > 0.8


def test_trained_head_falls_back_to_the_heads_forward():
    """Full fine-tuning (the head trains): same loss and gradients, the head's included."""
    model = causal_lm("mistral", tie_word_embeddings=False)
    inputs, labels = batch(300)
    ref_loss, _, ref_grads = loss_and_grads(lambda: mntp_loss_and_accuracy(model(input_ids=inputs).logits, labels),
                                            model)
    loss, _, grads = loss_and_grads(lambda: MaskedNextTokenModel(model)(inputs, labels), model)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert "lm_head.weight" in grads
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4)


def test_without_labels_it_returns_the_final_hidden_states():
    model = causal_lm("gemma3_text")
    inputs, _ = batch(300)
    hidden = MaskedNextTokenModel(model)(inputs)
    expected = model(input_ids=inputs, output_hidden_states=True).hidden_states[-1]
    assert hidden.shape == (4, 24, 32)
    torch.testing.assert_close(hidden, expected)
    logits = model.get_output_embeddings()(hidden)
    torch.testing.assert_close(logits, model(input_ids=inputs).logits, atol=1e-5, rtol=1e-5)
