"""int8 and binary vectors with sentence-transformers' ``quantize_embeddings`` semantics (tested equal).

int8: every dimension's [min, max] (the *ranges*, from calibration vectors: here all of the corpus's)
is cut into 256 equal buckets; a value becomes its bucket's number minus 128, values outside the
ranges the first or last bucket. A query must be quantized with the corpus's ranges, so they are
saved with the index. binary: one bit per dimension, 1 when the value is > 0, packed 8 to a byte
(sentence-transformers' "ubinary"). Rescoring dequantizes a bucket to its lower edge, as
sentence-transformers does.
"""

from __future__ import annotations

import numpy as np


def calibration_ranges(vectors: np.ndarray) -> np.ndarray:
    """The per-dimension [min; max] of ``vectors``: shape (2, d), float32."""
    return np.vstack((vectors.min(axis=0), vectors.max(axis=0))).astype(np.float32)


def _steps(ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = ranges[0].astype(np.float32)
    steps = (ranges[1].astype(np.float32) - starts) / 255
    return starts, np.where(steps == 0, 1, steps)  # a constant dimension: every value in bucket 0


def quantize_int8(vectors: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes [n, d] of float vectors: ``quantize_embeddings(vectors, "int8", ranges=ranges)``."""
    starts, steps = _steps(ranges)
    return (np.clip(np.floor((vectors - starts) / steps), 0, 255) - 128).astype(np.int8)


def dot_dequantized_int8(queries: np.ndarray, codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """[q, k] (float64): each query's dot product with its k int8 candidates ``codes`` [q, k, d] dequantized to
    the lower edge of their buckets, as sentence-transformers rescores, without building the float candidates:
    q . ((c + 128) * steps + starts) = c . (q * steps) + 128 * sum(q * steps) + q . starts."""
    starts, steps = _steps(ranges)
    scaled = queries.astype(np.float64) * steps
    constant = 128 * scaled.sum(axis=1) + queries.astype(np.float64) @ starts
    return np.matmul(codes.astype(np.float64), scaled[:, :, None])[..., 0] + constant[:, None]


def quantize_binary(vectors: np.ndarray) -> np.ndarray:
    """Packed sign bits [n, ceil(d / 8)] uint8: ``quantize_embeddings(vectors, "ubinary")``."""
    return np.packbits(vectors > 0, axis=-1)


def unpack_binary(codes: np.ndarray, dimension: int) -> np.ndarray:
    """The bits [n, d] (0 or 1, uint8) of packed binary codes."""
    return np.unpackbits(codes, axis=-1)[..., :dimension]
