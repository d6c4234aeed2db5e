"""Model inputs for embedding: optional instruction + text, marked by token masks (no separators)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sequence:
    """One tokenised input: ``ids[start:end]`` are the text's own tokens (what mean pooling reads)."""

    ids: list[int]
    start: int
    end: int


def build_sequences(tokenizer, texts: list[str], *, instruction: str | None, max_length: int,
                    add_bos: bool, add_eos: bool) -> list[Sequence]:
    """[BOS] + instruction + text + [EOS], the text truncated to fit ``max_length``.

    The instruction is tokenised on its own and marked by position, so no magic separator is ever
    inserted into the text (LLM2Vec's ``!@#$%^&*()``) and a text can contain anything.
    """
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    prefix = bos + (tokenizer(instruction, add_special_tokens=False)["input_ids"] if instruction else [])
    budget = max_length - len(prefix) - len(eos)
    if budget < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text after the instruction "
                         f"({len(prefix)} tokens)")
    kept = [ids[:budget] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [Sequence(prefix + ids + eos, len(prefix), len(prefix) + len(ids)) for ids in kept]


def collate(sequences: list[Sequence], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, embed_mask, position_ids."""
    length = max(len(s.ids) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    embed_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, : len(s.ids)] = torch.tensor(s.ids)
        attention_mask[i, : len(s.ids)] = 1
        embed_mask[i, s.start:s.end] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "embed_mask": embed_mask,
             "position_ids": position_ids_for(attention_mask)}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so that a left-padded sequence gets the same
    rotary positions as the sequence alone (transformers counts from the first column otherwise)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
