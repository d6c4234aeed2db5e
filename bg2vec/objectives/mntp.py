"""Masked next-token prediction (MNTP), stage 1 of LLM2Vec (BehnamGhader et al., 2024).

Tokens are masked as in BERT, but the token masked at position ``i`` is predicted from the model's
output at position ``i - 1``: a decoder's LM head was trained to predict the *next* token, and MNTP
keeps that head. Loss and accuracy therefore both use the shift (the reference bg2vec notebook
computed accuracy without it, scoring each output against the wrong token).

Only the masked tokens are scored, so training (:class:`MaskedNextTokenModel`) applies the LM head
only at the positions before them and computes the cross-entropy in chunks of rows: with a 262k
vocabulary (Gemma-2/3) the full logits of a 32 x 512 batch are 16k x 262k, 8.6 GB in bf16 and twice
that upcast, while the scored rows at mask ratio 0.2 are a fifth of them, and a chunk of 1,024 of
them is 1 GB in fp32. :func:`mntp_loss_and_accuracy` is the straightforward full computation the
tests compare it with.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bg2vec.errors import Bg2VecError

IGNORE = -100
MNTP_CHUNK_ROWS = 1024  # rows of logits at a time in MaskedNextTokenModel: 1 GB in fp32 at V = 262k
MaskToken = Literal["blank", "eos", "mask"]
Strategy = Literal["all_mask", "bert"]


@dataclass
class MNTPMasker:
    """Masks a batch of token blocks [B, L] -> (inputs, labels); labels are IGNORE where unmasked.

    ``all_mask`` replaces every chosen token by the mask token (the reference runs); ``bert`` uses
    BERT's 80% mask / 10% random token / 10% unchanged. Special tokens are never chosen, nor the
    first position (it has no previous position to be predicted from).
    """

    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    mask_ratio: float
    strategy: Strategy = "all_mask"

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1], got {self.mask_ratio}")

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator | None = None):
        candidates = ~torch.isin(input_ids, torch.tensor(self.special_ids, device=input_ids.device))
        candidates[:, 0] = False
        draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
        chosen = (draw < self.mask_ratio) & candidates
        labels = torch.where(chosen, input_ids, IGNORE)
        inputs = input_ids.clone()
        if self.strategy == "all_mask":
            inputs[chosen] = self.mask_token_id
            return inputs, labels
        draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
        inputs[chosen & (draw < 0.8)] = self.mask_token_id
        randomised = chosen & (draw >= 0.8) & (draw < 0.9)
        inputs[randomised] = torch.randint(self.vocab_size, input_ids.shape, generator=generator,
                                           device=input_ids.device)[randomised]
        return inputs, labels


def mask_token_id(tokenizer, choice: MaskToken) -> int:
    """The id of the chosen mask token: ``blank`` ("_", as in the reference runs), ``eos``, or
    ``mask`` (a ``<mask>`` token, which must have been added with :func:`add_mask_token`)."""
    if choice == "eos":
        if tokenizer.eos_token_id is None:
            raise Bg2VecError("mask_token=eos, but the tokenizer has no EOS token")
        return tokenizer.eos_token_id
    if choice == "mask":
        if tokenizer.mask_token_id is None:
            raise Bg2VecError("mask_token=mask needs add_mask_token(model, tokenizer) first")
        return tokenizer.mask_token_id
    ids = tokenizer("_", add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise Bg2VecError(f"mask_token=blank needs '_' to be a single token, but this tokenizer splits it "
                          f"into {ids}; use mask_token=mask or eos")
    return ids[0]


def add_mask_token(model, tokenizer, gather=lambda weight: contextlib.nullcontext()) -> int:
    """Add ``<mask>`` to the vocabulary; its embedding (and output row, if untied) starts at the mean
    of the existing rows, a neutral point the other tokens' statistics agree on.

    ``gather(weight)`` is a context in which a sharded weight is whole and writable (DeepSpeed
    ZeRO-3's GatheredParameters); the default suits unsharded models."""
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": "<mask>"})
    new = tokenizer.mask_token_id
    old = model.get_input_embeddings().weight.shape[0]
    if new >= old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            layers = (model.get_input_embeddings(), model.get_output_embeddings())
            for layer in {id(m): m for m in layers if m is not None}.values():
                with gather(layer.weight):
                    layer.weight[old:] = layer.weight[:old].mean(0)
    return new


def mntp_loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted cross-entropy and accuracy over the masked tokens.

    logits [B, L, V] (output at i predicts token i + 1), labels [B, L] (IGNORE where not masked).
    """
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(shifted_logits.float(), shifted_labels, ignore_index=IGNORE)
    scored = shifted_labels != IGNORE
    accuracy = (shifted_logits[scored].argmax(-1) == shifted_labels[scored]).float().mean()
    return loss, accuracy


class MaskedNextTokenModel(nn.Module):
    """A ``*ForCausalLM`` (peft-wrapped or not) for MNTP training: ``forward(input_ids, labels)`` ->
    (loss, accuracy) equal to :func:`mntp_loss_and_accuracy` on the model's full logits, and
    ``forward(input_ids)`` -> the decoder's final (normed) hidden states [B, L, H].

    The decoder runs once; the LM head only on the N rows whose next token is masked. When the head
    is frozen (LoRA, whose targets are the decoder's projections; Gemma's head is the tied input
    embedding) the loss and its gradient with respect to those rows are computed together, chunk by
    chunk, in the forward pass (:class:`FrozenHeadCrossEntropy`): no [N, V] tensor is ever whole,
    and the backward pass needs no logits and no head weight. A trained head (full fine-tuning)
    falls back to the head's own forward on the N rows. The model's final logit soft-capping
    (Gemma-2's ``final_logit_softcapping``) is applied as its own forward does.

    Under DeepSpeed ZeRO-3 the head's weight is read outside its own module's forward: register it
    (``deepspeed.zero.register_external_parameter(model, model.head_weight)``) so that ZeRO-3
    gathers it for this module's forward.
    """

    def __init__(self, lm: nn.Module, chunk_rows: int = MNTP_CHUNK_ROWS):
        super().__init__()
        self.lm, self.chunk_rows = lm, chunk_rows
        self.softcap = getattr(lm.config.get_text_config(), "final_logit_softcapping", None)

    @property
    def causal_lm(self) -> nn.Module:
        """The ``*ForCausalLM`` itself, through peft's wrapper."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def head_weight(self) -> nn.Parameter:
        return self.causal_lm.get_output_embeddings().weight

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        inner = self.causal_lm
        hidden = inner.get_decoder()(input_ids=input_ids).last_hidden_state
        if labels is None:
            return hidden
        shifted = labels[:, 1:]
        scored = shifted != IGNORE
        rows, targets = hidden[:, :-1][scored], shifted[scored]  # [N, H], [N]
        head = inner.get_output_embeddings()
        if head.weight.requires_grad or getattr(head, "bias", None) is not None:
            return _scored_logits_loss(head(rows), targets, self.softcap)
        return FrozenHeadCrossEntropy.apply(rows, head.weight, targets, self.softcap, self.chunk_rows)


def _scored_logits_loss(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None):
    logits = logits.float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    loss = F.cross_entropy(logits, targets)
    return loss, (logits.argmax(-1) == targets).float().mean()


class FrozenHeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy and accuracy of ``rows @ weight.T`` (soft-capped if ``softcap``) against
    ``targets``, over row chunks, with the gradient for ``rows`` computed in the same pass.

    rows [N, H], weight [V, H] (frozen: no gradient), targets [N] -> (loss, accuracy), scalars.
    Per chunk: logits in the weight's dtype upcast to fp32 (as the model's head and the reference
    loss do), softmax minus one-hot over N, times the soft-cap's derivative, times the weight.
    """

    @staticmethod
    def forward(ctx, rows, weight, targets, softcap, chunk_rows):
        n = rows.shape[0]
        grad = torch.empty_like(rows)
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        correct = torch.zeros((), dtype=torch.float32, device=rows.device)
        for start in range(0, n, chunk_rows):
            part, wanted = rows[start:start + chunk_rows], targets[start:start + chunk_rows]
            logits = (part @ weight.T).float()
            if softcap is not None:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, wanted[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(-1) == wanted).sum()
            dlogits = torch.exp(logits - lse[:, None])  # softmax, in place of the logits from here on
            dlogits[torch.arange(len(wanted), device=rows.device), wanted] -= 1
            if softcap is not None:
                dlogits *= 1 - capped * capped
            grad[start:start + chunk_rows] = (dlogits / n).to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return total / n, correct / n  # 0 / 0 = NaN when nothing is scored, as the reference's mean

    @staticmethod
    def backward(ctx, grad_loss, grad_accuracy):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None
