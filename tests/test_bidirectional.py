"""Bidirectional attention for every supported family, checked by perturbation, not by flags."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM, GPT2Config
from transformers.utils import is_flash_attn_2_available

from bg2vec.errors import Bg2VecError
from bg2vec.modeling import FAMILIES, is_bidirectional, make_bidirectional, make_causal, position_ids_for
from bg2vec.modeling.tiny import tiny_config

VOCAB = 100
IMPLEMENTATIONS = ["eager", "sdpa"] + (["flash_attention_2"] if is_flash_attn_2_available() else [])
# Gemma-2's attention soft-capping exists in eager and flash attention only (transformers refuses sdpa)
CASES = [(family, impl) for family in FAMILIES for impl in IMPLEMENTATIONS
         if not (family == "gemma2" and impl == "sdpa")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny(family: str, impl: str, head: bool = False, **overrides):
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if head else AutoModel
    dtype = torch.bfloat16 if impl == "flash_attention_2" else torch.float32
    model = auto.from_config(tiny_config(family, VOCAB, **overrides), attn_implementation=impl, dtype=dtype)
    return model.to(DEVICE).eval()


def first_state(model, ids, **kw):
    out = model(input_ids=ids, **kw)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state)[:, 0]


def atol(impl):
    return 2e-2 if impl == "flash_attention_2" else 1e-5


@pytest.mark.parametrize("family, impl", CASES)
def test_last_token_reaches_the_first_only_when_bidirectional(family, impl):
    model = tiny(family, impl)
    ids = torch.randint(1, VOCAB, (2, 6), device=DEVICE)
    changed = ids.clone()
    changed[:, -1] = ids[:, -1] % (VOCAB - 1) + 1
    with torch.no_grad():
        causal = first_state(model, ids)
        assert torch.equal(causal, first_state(model, changed)), "a causal model's first token saw the future"
        assert make_bidirectional(model) is model and is_bidirectional(model)
        bidirectional = first_state(model, ids)
        assert not torch.allclose(bidirectional, first_state(model, changed), atol=atol(impl))
        make_causal(model)
        assert not is_bidirectional(model)
        assert torch.equal(first_state(model, ids), causal)
        assert torch.equal(first_state(model, changed), causal)


@pytest.mark.parametrize("family, impl", CASES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_changes_nothing(family, impl, side):
    model = make_bidirectional(tiny(family, impl))
    lengths = [7, 4, 1]
    seqs = [torch.randint(1, VOCAB, (n,), device=DEVICE) for n in lengths]
    with torch.no_grad():
        alone = [model(input_ids=s[None]).last_hidden_state[0] for s in seqs]  # batch size 1, no padding
        for pad_id in (0, 57):  # what the padding holds must not matter either
            ids = torch.full((3, 7), pad_id, device=DEVICE)
            mask = torch.zeros(3, 7, dtype=torch.long, device=DEVICE)
            for i, s in enumerate(seqs):
                span = slice(7 - len(s), 7) if side == "left" else slice(0, len(s))
                ids[i, span], mask[i, span] = s, 1
            out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask)).last_hidden_state
            for i, s in enumerate(seqs):
                span = slice(7 - len(s), 7) if side == "left" else slice(0, len(s))
                torch.testing.assert_close(out[i, span].float(), alone[i].float(), atol=atol(impl), rtol=0)


@pytest.mark.parametrize("family, impl", CASES)
def test_gradients_flow_from_first_output_to_last_input(family, impl):
    model = make_bidirectional(tiny(family, impl)).train()
    embeds = model.get_input_embeddings()(torch.randint(1, VOCAB, (2, 6), device=DEVICE)).detach().requires_grad_()
    model(inputs_embeds=embeds).last_hidden_state[:, 0].float().pow(2).sum().backward()
    assert embeds.grad[:, -1].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "layers.0." in n)


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_language_model_head_and_peft_wrappers(family):
    model = tiny(family, "eager", head=True)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(1, VOCAB, (1, 6), device=DEVICE)
    changed = ids.clone()
    changed[0, -1] = ids[0, -1] % (VOCAB - 1) + 1
    make_bidirectional(lora)
    with torch.no_grad():
        assert not torch.allclose(first_state(lora, ids), first_state(lora, changed))


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_sliding_window_layers_become_symmetric_windows(family):
    # two sliding layers with a window of 4: each layer reaches 4 positions on either side (inclusive,
    # transformers' convention), so token 0 sees position 8 through two layers and nothing beyond
    model = make_bidirectional(tiny(family, "eager", layer_types=["sliding_attention"] * 2))
    ids = torch.randint(1, VOCAB, (1, 12), device=DEVICE)
    with torch.no_grad():
        base = first_state(model, ids)
        for position, reaches in ((4, True), (8, True), (9, False), (11, False)):
            changed = ids.clone()
            changed[0, position] = ids[0, position] % (VOCAB - 1) + 1
            assert (not torch.allclose(first_state(model, changed), base)) is reaches, position


def test_gemma2_soft_capping_is_kept():
    cap = 0.5  # logits squashed into (-cap, cap): weights within a factor exp(2 * cap) of each other
    # large random weights, so that the uncapped model's attention logits spread far beyond the cap
    model = make_bidirectional(tiny("gemma2", "eager", attn_logit_softcapping=cap, initializer_range=1.0))
    with torch.no_grad():
        attentions = model(input_ids=torch.randint(1, VOCAB, (1, 8)), output_attentions=True).attentions
    full_layer = attentions[1][0]  # layer 1 is global: every query sees all 8 keys
    assert full_layer[:, 0, -1].min() > 0  # the first query attends to the last key
    ratio = full_layer.max(dim=-1).values / full_layer.min(dim=-1).values
    assert ratio.max() <= torch.exp(torch.tensor(2 * cap)) + 1e-4
    uncapped = make_bidirectional(tiny("gemma2", "eager", attn_logit_softcapping=None, initializer_range=1.0))
    with torch.no_grad():
        loose = uncapped(input_ids=torch.randint(1, VOCAB, (1, 8)), output_attentions=True).attentions[1][0]
    assert (loose.max(dim=-1).values / loose.min(dim=-1).values).max() > torch.exp(torch.tensor(2 * cap))


def test_unsupported_architecture_is_named():
    gpt2 = AutoModel.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB))
    with pytest.raises(Bg2VecError, match="model_type 'gpt2'.*Mistral, Llama, Qwen2, Qwen3, Gemma-2, Gemma-3"):
        make_bidirectional(gpt2)


def test_position_ids_count_only_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert position_ids_for(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]
