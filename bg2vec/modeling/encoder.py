"""Bg2Vec: a decoder LLM used as a text encoder — load, encode, save.

A trained directory holds the last stage's LoRA adapter at its top (``adapter_config.json``,
``adapter_model.safetensors``: loadable by peft itself), the adapters of earlier stages under
``stages/<name>/`` (merged into the base before the last one is applied, as in training), the
tokenizer, and ``bg2vec_config.json`` with everything needed to rebuild the encoder.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

import bg2vec
from bg2vec.console.library_logs import bare_model_from_causal_lm, peft_quietly
from bg2vec.errors import Bg2VecError
from bg2vec.modeling import packaged
from bg2vec.modeling.bidirectional import family_of, make_bidirectional, make_causal
from bg2vec.modeling.inputs import build_sequences, collate
from bg2vec.modeling.pooling import POOLING_MODES, pool

CONFIG_NAME = "bg2vec_config.json"
FORMAT = "bg2vec-encoder-v1"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class EncoderConfig:
    """Everything needed to rebuild an encoder; saved as ``bg2vec_config.json``."""

    base_model: str
    """Hub id or path of the base LLM the adapters apply to; a relative path is looked up inside
    the encoder directory first."""
    family: str
    """model_type of the base (mistral, llama, qwen2, qwen3, gemma2, gemma3_text)."""
    bidirectional: bool = True
    pooling: str = "mean"
    max_length: int = 512
    """Longest input in tokens (instruction and special tokens included); longer texts are truncated."""
    stages: list[dict] = field(default_factory=list)
    """Training stages applied, in order: name, adapter folder (relative) and key hyperparameters."""
    base_revision: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    """Instructions the encoder was trained with, by input type (sentence-transformers' prompt names):
    ``{"query": "..."}`` after the contrastive-pairs stage; queries are encoded with it
    (``encode(instruction=...)``), passages without. Empty: no instruction."""
    matryoshka_dims: list[int] = field(default_factory=list)
    """Leading dimensions trained to work on their own (Matryoshka loss), e.g. [64, 128, 256]; a
    vector cut to one of them (and re-normalised) loses little. Empty: none trained."""
    format: str = FORMAT
    bg2vec_version: str = bg2vec.__version__

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise Bg2VecError(f"pooling={self.pooling!r} is not one of {', '.join(POOLING_MODES)}")
        if self.max_length < 2:
            raise Bg2VecError(f"max_length must be at least 2, got {self.max_length}")


class Bg2Vec:
    """Text encoder: ``Bg2Vec.from_pretrained(...)``, ``encode(texts)``, ``save(dir)``.

    ``encode`` follows sentence-transformers' (and MTEB's) protocol, so MTEB can evaluate it as is.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config: EncoderConfig, source: Path | None = None):
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self._source = source  # a trained directory whose adapters save() copies
        (make_bidirectional if config.bidirectional else make_causal)(self.model)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, pooling: str | None = None, max_length: int | None = None,
                        bidirectional: bool | None = None, torch_dtype=None, dtype=None,
                        attn_implementation: str | None = None, device_map=None, device=None,
                        trust_remote_code: bool = False, revision: str | None = None,
                        up_to_stage: str | None = None) -> Bg2Vec:
        """A base LLM (hub id or path) or a trained bg2vec directory.

        For a base LLM the defaults are the LLM2Vec recipe (bidirectional, mean pooling); pass
        ``bidirectional=False, pooling="last"`` for the usual causal baseline. For a trained
        directory the settings come from its ``bg2vec_config.json`` unless overridden here;
        ``up_to_stage="mntp"`` applies the stages up to that one only (the MNTP encoder inside a
        SimCSE directory, for comparisons).
        """
        path = Path(name_or_path)
        trained = (path / CONFIG_NAME).is_file()
        if trained:
            saved = json.loads((path / CONFIG_NAME).read_text())
            unknown = set(saved) - {f.name for f in dataclasses.fields(EncoderConfig)}
            if unknown or saved.get("format") != FORMAT:
                raise Bg2VecError(f"{path / CONFIG_NAME} is not a {FORMAT} file (format {saved.get('format')!r}, "
                                  f"unknown keys {sorted(unknown)}); was it written by a newer bg2vec?")
            config = EncoderConfig(**saved)
            if up_to_stage is not None:
                names = [stage["name"] for stage in config.stages]
                if up_to_stage not in names:
                    raise Bg2VecError(f"{path} has stages {names}; up_to_stage={up_to_stage!r} is not one of them")
                config.stages = config.stages[:names.index(up_to_stage) + 1]
            base, revision = config.base_model, config.base_revision
            if (path / base).is_dir():  # a base shipped inside the directory (the tiny presets)
                base = str(path / base)
        elif up_to_stage is not None:
            raise Bg2VecError(f"up_to_stage={up_to_stage!r} needs a trained bg2vec directory; {path} has no "
                              f"{CONFIG_NAME}")
        else:
            config, base = None, str(name_or_path)
        dtype = dtype or torch_dtype or (torch.bfloat16 if torch.cuda.is_available() and device != "cpu"
                                         else torch.float32)
        name, base = base, packaged.resolve(base)  # the config keeps a packaged model's name, not a cache path
        try:
            with bare_model_from_causal_lm():  # a base LLM's checkpoint has an LM head, which an encoder leaves out
                model = AutoModel.from_pretrained(base, dtype=dtype, attn_implementation=attn_implementation,
                                                  device_map=device_map, revision=revision,
                                                  trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path if trained else base, revision=None if trained else revision,
                                                      trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:  # ValueError: a folder that is no model ("Unrecognized model in ...")
            raise Bg2VecError(f"cannot load {base}: {e}") from None
        if config is None:
            config = EncoderConfig(base_model=name, family=family_of(model), base_revision=revision)
        else:
            model = _apply_stages(model, path, config.stages)
        if device_map is None:
            model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        overrides = {k: v for k, v in (("pooling", pooling), ("max_length", max_length),
                                       ("bidirectional", bidirectional)) if v is not None}
        source = path if trained and up_to_stage is None else None  # a view of some stages is not saved as a copy
        return cls(model, tokenizer, dataclasses.replace(config, **overrides), source=source)

    @property
    def dimension(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @torch.inference_mode()
    def encode(self, sentences, batch_size: int = 32, instruction: str | None = None, normalize: bool = True,
               show_progress_bar: bool = False, **kwargs) -> np.ndarray:
        """Embeddings [n, d] float32, L2-normalised unless ``normalize=False``.

        Texts are batched by length (fewer padding tokens), truncated to ``max_length``; extra
        keyword arguments (MTEB's task_name, prompt_type, ...) are accepted and ignored.
        """
        texts = _as_texts(sentences)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        sequences = self._sequences(texts, instruction, self.config.max_length)
        order = sorted(range(len(texts)), key=lambda i: -len(sequences[i].ids))
        pad_id = next(i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None)
        device = next(self.model.parameters()).device
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encoding", unit="batch")
        for start in starts:
            chosen = order[start:start + batch_size]
            batch = collate([sequences[i] for i in chosen], pad_id, device)
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                position_ids=batch["position_ids"]).last_hidden_state
            embeddings = pool(hidden, batch["attention_mask"], batch["embed_mask"], self.config.pooling).float()
            if normalize:
                embeddings = F.normalize(embeddings, dim=-1)
            out[chosen] = embeddings.cpu().numpy()
        return out

    def token_counts(self, sentences, instruction: str | None = None) -> list[int]:
        """Tokens each text takes as ``encode``'s input before truncation to ``max_length`` (special and
        instruction tokens included): over ``max_length`` means ``encode`` truncates it."""
        return [len(s.ids) for s in self._sequences(_as_texts(sentences), instruction, max_length=sys.maxsize)]

    def _sequences(self, texts: list[str], instruction: str | None, max_length: int):
        return build_sequences(self.tokenizer, texts, instruction=instruction, max_length=max_length,
                               add_bos=True, add_eos=self.config.pooling == "last")

    def save(self, directory: str | Path) -> None:
        """Write the directory layout of the contract (safetensors only; adapters loadable by peft)."""
        if self._source is None and self.config.stages:
            raise Bg2VecError("an encoder loaded with up_to_stage= is a view of a trained directory and cannot be "
                              "saved; save (or copy) the directory it came from")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._source is not None and self._source.resolve() != directory.resolve():
            for name in ADAPTER_FILES:
                if (self._source / name).is_file():
                    shutil.copy2(self._source / name, directory / name)
            if (self._source / "stages").is_dir():
                shutil.copytree(self._source / "stages", directory / "stages", dirs_exist_ok=True)
        write_encoder_files(directory, self.tokenizer, self.config)


def write_encoder_files(directory: Path, tokenizer, config: EncoderConfig) -> None:
    """The tokenizer and bg2vec_config.json of an encoder directory (adapters are written by the caller)."""
    tokenizer.save_pretrained(directory)
    (directory / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(config), indent=2, ensure_ascii=False))


def _apply_stages(model, directory: Path, stages: list[dict]):
    """Merge every stage's adapter into the base in training order (the last one at the top)."""
    from peft import PeftModel

    for stage in stages:
        if stage.get("adapter") is None:
            continue
        adapter_dir = directory / stage["adapter"]
        if not (adapter_dir / "adapter_model.safetensors").is_file():
            raise Bg2VecError(f"{directory}: stage {stage['name']!r} names adapter folder {adapter_dir}, "
                              f"which has no adapter_model.safetensors")
        with peft_quietly():
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model


def _as_texts(sentences) -> list[str]:
    """A string, strings, or batches with a "text" field (MTEB 2 passes a DataLoader of those)."""
    if isinstance(sentences, str):
        return [sentences]
    items = list(sentences)
    if items and isinstance(items[0], dict):
        return [text for batch in items for text in batch["text"]]
    return items
