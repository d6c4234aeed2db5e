"""The encoder actor of the embedding pipeline: one model per actor, batches of passages in, vectors out."""

from __future__ import annotations

import pyarrow as pa
import torch


class PassageEncoder:
    """``map_batches`` class (Ray Data builds one per actor of the pool, so each loads the model once)."""

    def __init__(self, model: str, batch_size: int, instruction: str | None, normalize: bool, dtype: str):
        from bg2vec import Bg2Vec
        from bg2vec.console import quiet_worker
        from bg2vec.storage import localize

        quiet_worker()
        cuda = torch.cuda.is_available()  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU(s)
        torch_dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bfloat16": torch.bfloat16,
                       "float32": torch.float32}[dtype]
        self.encoder = Bg2Vec.from_pretrained(localize(model), dtype=torch_dtype, device="cuda" if cuda else "cpu")
        self.batch_size, self.instruction, self.normalize = batch_size, instruction, normalize

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("passage").to_pylist()
        vectors = self.encoder.encode(texts, batch_size=self.batch_size, instruction=self.instruction,
                                      normalize=self.normalize)
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return batch.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))

