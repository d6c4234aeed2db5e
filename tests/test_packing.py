"""Packing tokens into blocks, special tokens, and the hash split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from bg2vec.data.splits import split_of
from bg2vec.data.tokens.packing import BlockPacker, blocks_to_arrow, with_special_tokens


def test_packer_carries_the_remainder_across_batches():
    packer = BlockPacker(seq_len=4)
    first = packer.add(np.arange(10, dtype=np.int32))
    assert first.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert packer.dropped == 2  # 8 and 9 wait for the next batch
    second = packer.add(np.arange(10, 16, dtype=np.int32))
    assert second.tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]
    assert packer.dropped == 0
    assert packer.add(np.array([16, 17, 18], dtype=np.int32)).shape == (0, 4)
    assert (packer.tokens_in, packer.blocks_out, packer.dropped) == (19, 4, 3)


def test_packed_stream_is_the_concatenation_whatever_the_batching():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 1000, rng.integers(1, 40)).astype(np.int32) for _ in range(200)]
    stream = np.concatenate(docs)
    for batch in (1, 7, 64):
        packer = BlockPacker(seq_len=16)
        blocks = [packer.add(np.concatenate(docs[i:i + batch])) for i in range(0, len(docs), batch)]
        flat = np.concatenate([b.reshape(-1) for b in blocks])
        assert np.array_equal(flat, stream[: len(flat)])
        assert len(flat) + packer.dropped == len(stream) and packer.dropped < 16


def test_blocks_become_list_of_int32():
    arr = blocks_to_arrow(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert arr.type == pa.list_(pa.int32())
    assert arr.to_pylist() == [[0, 1, 2], [3, 4, 5]]


def test_special_tokens_wrap_every_document():
    docs = pa.array([[1, 2], [3], [4, 5, 6]], type=pa.list_(pa.int32()))
    assert with_special_tokens(docs, 100, 101).to_pylist() == [[100, 1, 2, 101], [100, 3, 101], [100, 4, 5, 6, 101]]
    assert with_special_tokens(docs, None, 101).to_pylist() == [[1, 2, 101], [3, 101], [4, 5, 6, 101]]
    assert with_special_tokens(docs, 100, None).to_pylist() == [[100, 1, 2], [100, 3], [100, 4, 5, 6]]
    assert with_special_tokens(docs.slice(1, 2), 7, 8).to_pylist() == [[7, 3, 8], [7, 4, 5, 6, 8]]
    assert with_special_tokens(docs, None, None) is docs


def test_split_is_a_stable_hash_of_the_page_id():
    # fixed values: changing the hash would silently move pages between train and validation
    validation = [i for i in range(20_000) if split_of(i, 0.05) == "validation"]
    assert validation[:5] == [6, 77, 79, 127, 136]
    assert 900 < len(validation) < 1100
    assert all(split_of(i, 0.0) == "train" for i in range(1000))
    assert {split_of(i, 0.1) for i in validation} == {"validation"}  # growing the fraction keeps them
