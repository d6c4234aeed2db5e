"""Masked next-token prediction (MNTP), stage 1 of LLM2Vec (BehnamGhader et al., 2024).

Tokens are masked as in BERT, but the token masked at position ``i`` is predicted from the model's
output at position ``i - 1``: a decoder's LM head was trained to predict the *next* token, and MNTP
keeps that head. Loss and accuracy therefore both use the shift (the reference bg2vec notebook
computed accuracy without it, scoring each output against the wrong token).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bg2vec.errors import Bg2VecError

IGNORE = -100
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
