"""What differs between the training stages inside the worker loop (``bg2vec.training.loop``).

Each stage says which model it trains (MNTP: the ``*ForCausalLM`` with a mask token; SimCSE and
contrastive: the bare decoder with the earlier stages' adapters merged), how a batch is built, its
forward pass and loss, and what its dev score embeds (``bg2vec.training.dev_score``). The loop does
everything else the same way for all of them: DeepSpeed, checkpoints, metrics, the NaN stop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from bg2vec.modeling.dropout import set_dropout
from bg2vec.modeling.pooling import pool
from bg2vec.objectives.contrastive import distributed_contrastive_loss
from bg2vec.objectives.mntp import MaskedNextTokenModel, MNTPMasker, add_mask_token, mask_token_id
from bg2vec.objectives.simcse import distributed_simcse_loss
from bg2vec.storage import localize
from bg2vec.training.config import TINY_PREFIX, ContrastiveConfig, MNTPConfig, SimCSEConfig, TrainConfig
from bg2vec.training.data import BlocksCollator, PairCollator, TextCollator
from bg2vec.training.dev_score import halves
from bg2vec.training.model import gather_for_write, load_base, merge_adapter


class Stage:
    """The parts of a stage the loop asks for; ``rank`` and ``world`` are this worker's place."""

    name: str
    global_loss = True
    """The loss is already the global batch's on every rank (contrastive losses over gathered rows): the
    loop scales it by the world size, since DeepSpeed averages gradients (bg2vec.objectives.simcse)."""
    validate_in_eval_mode = True
    """Validation batches without dropout."""

    def __init__(self, cfg: TrainConfig, resolved: dict, tokenizer, rank: int, world: int):
        self.cfg, self.resolved, self.tokenizer, self.rank, self.world = cfg, resolved, tokenizer, rank, world
        self.tiny_base: Path | None = None  # mntp: a tiny base saved for the output
        self.start_dir: Path | None = None  # the trained directory this stage continues
        self.collate = None

    def load(self, dtype: torch.dtype, base_path: str | None) -> torch.nn.Module:
        """The model LoRA is added to (bidirectional attention comes after, in the loop)."""
        raise NotImplementedError

    def wrap(self, peft_model) -> torch.nn.Module:
        """The module DeepSpeed trains, around the peft model."""
        return peft_model

    def forward(self, engine, batch: dict, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss, accuracy, real tokens) of one micro-batch already on ``device``."""
        raise NotImplementedError

    def dev_share(self, batches: list[dict]):
        """This rank's equal share of the dev rows (every rank receives them all, numbered; all ranks run
        the same number of forward passes, as ZeRO-3 requires). Here: the dev blocks."""
        index = np.concatenate([b["index"] for b in batches])
        blocks = np.concatenate([np.stack(b["input_ids"]) for b in batches])[np.argsort(index)]
        return torch.from_numpy(blocks[self.rank::self.world].astype(np.int64))

    def dev_embeddings(self, engine, share, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries, the targets they must find) of this rank's share, [n, H] each, in the same order.
        Here: the first and second halves of each dev block, mean-pooled."""
        embedded = []
        for blocks in share.split(self.cfg.micro_batch):
            parts = halves(blocks).to(device)  # first halves, then second halves: one forward pass
            ones = torch.ones_like(parts)
            embedded.append(pool(self._hidden(engine, parts), ones, ones, "mean").float().unflatten(0, (2, -1)))
        first, second = torch.cat(embedded, dim=1)
        return first, second

    @staticmethod
    def _hidden(engine, input_ids):
        return engine(input_ids=input_ids).last_hidden_state


class MNTPStage(Stage):
    name = "mntp"
    global_loss = False

    def load(self, dtype, base_path):
        cfg = self.cfg
        model = load_base(cfg.model, causal_lm=True, tokenizer=self.tokenizer, dtype=dtype, seed=cfg.seed,
                          base_path=base_path)
        self._save_tiny_base(model)
        if cfg.mask_token == "mask":
            with gather_for_write(model.get_input_embeddings().weight):
                add_mask_token(model, self.tokenizer)
        self.masker = MNTPMasker(
            mask_token_id(self.tokenizer, cfg.mask_token), len(self.tokenizer),
            tuple(self.tokenizer.all_special_ids), cfg.mask_ratio, cfg.mask_strategy)
        self.collate = BlocksCollator()
        return model

    def _save_tiny_base(self, model) -> None:
        """tiny:<family> bases exist nowhere else: rank 0 keeps the initial weights for the output.

        Saved as the bare decoder, without MNTP's LM head: what SimCSE and the encoder load
        (``AutoModel``), which would otherwise report the head's weights as unexpected at every load."""
        if self.resolved["base"].startswith(TINY_PREFIX) and self.rank == 0:
            self.tiny_base = Path(tempfile.mkdtemp(prefix="bg2vec-tiny-base-"))
            model.base_model.save_pretrained(self.tiny_base)
            self.tokenizer.save_pretrained(self.tiny_base)  # a complete model folder of its own

    def wrap(self, peft_model):  # the LM head only where a masked token is predicted
        model = MaskedNextTokenModel(peft_model)
        if self.cfg.zero_stage == 3:
            import deepspeed

            deepspeed.zero.register_external_parameter(model, model.head_weight)
        return model

    def forward(self, engine, batch, seed, device):
        generator = torch.Generator(device=device).manual_seed(seed)
        inputs, labels = self.masker(batch["input_ids"], generator)
        loss, accuracy = engine(input_ids=inputs, labels=labels)  # full blocks: no padding, no mask
        return loss, accuracy, batch["input_ids"].numel()

    @staticmethod
    def _hidden(engine, input_ids):  # MaskedNextTokenModel without labels: the final (normed) hidden states
        return engine(input_ids=input_ids)


class EncoderStage(Stage):
    """SimCSE and contrastive: the bare decoder, earlier stages merged in their training order."""

    def load(self, dtype, base_path):
        cfg = self.cfg
        self.start_dir = Path(localize(self.resolved["start"]))
        model = load_base(cfg.model, causal_lm=False, tokenizer=self.tokenizer, dtype=dtype, seed=cfg.seed,
                          base_path=base_path)
        for stage in self.resolved["start_config"]["stages"]:
            model = merge_adapter(model, self.start_dir / stage["adapter"])
        set_dropout(model, cfg.attention_dropout, cfg.hidden_dropout)
        return model

    def _embed(self, engine, inputs: dict) -> torch.Tensor:
        hidden = engine(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        position_ids=inputs["position_ids"]).last_hidden_state
        return pool(hidden, inputs["attention_mask"], inputs["embed_mask"], self.cfg.pooling)


class SimCSEStage(EncoderStage):
    name = "simcse"
    validate_in_eval_mode = False  # the dropout noise is what makes its two views differ

    def load(self, dtype, base_path):
        model = super().load(dtype, base_path)
        self.collate = TextCollator(self.tokenizer, self.cfg.max_length, self.cfg.pooling)
        return model

    def forward(self, engine, batch, seed, device):
        # both views in one forward pass (dropout differs per row), then split
        doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
        a, b = self._embed(engine, doubled).chunk(2)
        loss, accuracy = distributed_simcse_loss(a, b, self.cfg.temperature)
        return loss, accuracy, int(doubled["attention_mask"].sum())


class ContrastiveStage(EncoderStage):
    name = "contrastive"

    def load(self, dtype, base_path):
        model = super().load(dtype, base_path)
        cfg = self.cfg
        self.collate, self.dev_collate = (
            PairCollator(self.tokenizer, cfg.max_length, cfg.pooling, cfg.query_instruction, negatives)
            for negatives in (cfg.hard_negatives, 0))
        return model

    def forward(self, engine, batch, seed, device):
        embedded = self._embed(engine, batch)  # queries, positives and negatives in one forward pass
        queries, passages = embedded[batch["is_query"]], embedded[~batch["is_query"]]
        positives, negatives = passages[:len(queries)], passages[len(queries):]
        loss, accuracy = distributed_contrastive_loss(queries, positives, negatives, self.cfg.temperature,
                                                      self.cfg.matryoshka_dims)
        return loss, accuracy, int(batch["attention_mask"].sum())

    def dev_share(self, batches):
        columns = {k: np.concatenate([b[k] for b in batches]) for k in ("index", "query", "positive", "instruction")}
        order = np.argsort(columns.pop("index"))[self.rank::self.world]
        return {k: v[order] for k, v in columns.items()}

    def dev_embeddings(self, engine, share, device):
        """Each validation query (with its instruction) and its positive (bg2vec.training.dev_score)."""
        queries, positives = [], []
        for start in range(0, len(share["query"]), self.cfg.micro_batch):
            rows = {k: v[start:start + self.cfg.micro_batch] for k, v in share.items()}
            batch = {k: v.to(device) for k, v in self.dev_collate(rows).items()}
            embedded = self._embed(engine, batch).float()
            queries.append(embedded[batch["is_query"]])
            positives.append(embedded[~batch["is_query"]])
        return torch.cat(queries), torch.cat(positives)


STAGES: dict[str, tuple[type[TrainConfig], type[Stage]]] = {
    "mntp": (MNTPConfig, MNTPStage), "simcse": (SimCSEConfig, SimCSEStage),
    "contrastive": (ContrastiveConfig, ContrastiveStage)}
