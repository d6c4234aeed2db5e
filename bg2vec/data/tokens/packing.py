"""Tokens of consecutive documents -> blocks of exactly ``seq_len`` tokens.

The packer carries the tokens that do not fill a block over to the next batch, so nothing is lost
at batch boundaries; only the final partial block of a shard is dropped, and counted.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class BlockPacker:
    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.carry = np.empty(0, dtype=np.int32)
        self.tokens_in = 0
        self.blocks_out = 0

    def add(self, tokens: np.ndarray) -> np.ndarray:
        """Append a flat run of tokens; return the completed blocks, shape [n, seq_len]."""
        self.tokens_in += len(tokens)
        buf = np.concatenate([self.carry, tokens.astype(np.int32, copy=False)])
        n = len(buf) // self.seq_len
        self.carry = buf[n * self.seq_len:].copy()
        self.blocks_out += n
        return buf[: n * self.seq_len].reshape(n, self.seq_len)

    @property
    def dropped(self) -> int:
        """Tokens left over; dropped when the shard ends."""
        return len(self.carry)


def blocks_to_arrow(blocks: np.ndarray) -> pa.ListArray:
    """[n, seq_len] int32 -> list<int32> array (the contract's block column type)."""
    n, seq_len = blocks.shape
    offsets = pa.array(np.arange(0, (n + 1) * seq_len, seq_len, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(blocks.reshape(-1), type=pa.int32()))


def with_special_tokens(docs: pa.ListArray, bos: int | None, eos: int | None) -> pa.ListArray:
    """Wrap every document's tokens in BOS ... EOS (each optional), vectorised."""
    if bos is None and eos is None:
        return docs
    values = docs.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    offsets = docs.offsets.to_numpy()
    offsets = offsets - offsets[0]  # a sliced array's offsets do not start at 0; flatten() does
    lengths = np.diff(offsets)
    head, extra = int(bos is not None), int(bos is not None) + int(eos is not None)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths + extra, out=new_offsets[1:])
    out = np.empty(new_offsets[-1], dtype=np.int32)
    shift = np.repeat(new_offsets[:-1] + head - offsets[:-1], lengths)
    out[np.arange(len(values)) + shift] = values
    if bos is not None:
        out[new_offsets[:-1]] = bos
    if eos is not None:
        out[new_offsets[1:] - 1] = eos
    return pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32)), pa.array(out, type=pa.int32()))
