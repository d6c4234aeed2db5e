"""A trained encoder as a plain sentence-transformers folder, loadable without bg2vec.

Every stage's LoRA is merged into the base weights (safetensors); the config switches on
bidirectional attention through transformers' public ``is_causal`` setting, so ``AutoModel`` (and
with it sentence-transformers, MTEB, LangChain ...) runs the encoder as trained. The modules
reproduce :meth:`bg2vec.Bg2Vec.encode` with sentence-transformers' own building blocks:

- the tokenizer's post-processor adds exactly the special tokens the encoder adds (BOS, and the EOS
  that last-token pooling reads);
- ``mean`` pooling reads the text's tokens only: a WordWeights module gives BOS weight 0 (the
  attention mask already leaves out padding), and Pooling's ``include_prompt: false`` leaves out a
  query/document prompt's tokens, as ``encode(instruction=...)`` does;
- ``last`` is Pooling's ``lasttoken`` (the appended EOS), ``bos`` its ``cls`` (the first real token);
- Normalize, as ``encode(normalize=True)``.

The query prompt is the encoder's own (``prompts["query"]``) unless the config names one; an encoder
trained with Matryoshka dimensions keeps its full dimension, and the card shows
``SentenceTransformer(path, truncate_dim=d)`` for each trained ``d``.

Rotary positions are relative, so left or right padding gives the same embeddings. The folder uses
module formats of sentence-transformers >= 5 (the floor is named in config_sentence_transformers.json).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.errors import Bg2VecError
from bg2vec.export.config import ExportConfig
from bg2vec.export.model_card import results_file, write_card
from bg2vec.modeling.encoder import CONFIG_NAME
from bg2vec.modeling.inputs import build_sequences
from bg2vec.storage import check_apart

SENTENCE_TRANSFORMERS_FLOOR = "5.0.0"
# bg2vec pooling -> sentence-transformers Pooling mode (weighted_mean has no equivalent: its weights
# count from the text's first token, sentence-transformers' from the BOS)
POOLING = {"mean": "mean", "last": "lasttoken", "bos": "cls"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Texts the export checks the tokenizer and the sentence-transformers folder on
PROBES = ["Столицата на България е София.", "Рилският манастир е основан през X век от Иван Рилски.",
          "Кратък текст", "A mixed текст with digits 2024 and symbols: (a+b)^2 = 1!"]


def export(cfg: ExportConfig) -> dict:
    """Write ``cfg.output`` (complete or not at all); return what was written and checked."""
    source, out = Path(cfg.model), Path(cfg.output)
    results = results_file(cfg)
    check_apart(cfg.output, {"model": cfg.model, "results": str(results) if results else None})
    if not (source / CONFIG_NAME).is_file():
        raise Bg2VecError(f"model={cfg.model} is not a trained bg2vec directory (no {CONFIG_NAME}); pass the "
                          f"output of jobs/simcse.py or jobs/mntp.py")
    if out.exists() and not cfg.overwrite and (out.is_file() or any(out.iterdir())):
        raise Bg2VecError(f"output={cfg.output} already exists; choose another folder or pass overwrite=true")
    _check_writable_parent(out)
    _sentence_transformers()  # missing: an error now, not after the merge
    encoder = Bg2Vec.from_pretrained(source, dtype=torch.float32, device="cpu")
    if encoder.config.pooling not in POOLING:
        raise Bg2VecError(f"{source}: pooling {encoder.config.pooling!r} has no sentence-transformers equivalent; "
                          f"export supports {', '.join(POOLING)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the folder is as readable as any new one
        reference = encoder.encode(PROBES)  # in float32, before the weights are cast to cfg.dtype
        summary = write_folder(encoder, staging, cfg)
        summary["results"] = results
        summary["verification"] = verify(staging, reference, cfg)
        write_card(staging, encoder, cfg, summary)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if cfg.push_to_hub:
        from bg2vec.export.hub import push

        summary["hub_url"] = push(out, cfg.push_to_hub, private=cfg.private)
    return summary


def _check_writable_parent(out: Path) -> None:
    """Before anything loads: the output's nearest existing parent is a folder this process can write in."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise Bg2VecError(f"output={out}: {parent} is a file, not a folder; choose an output path under a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Bg2VecError(f"output={out}: the folder {parent} is not writable; choose another output")


def write_folder(encoder: Bg2Vec, folder: Path, cfg: ExportConfig) -> dict:
    """The merged model, the tokenizer and the sentence-transformers modules in ``folder``."""
    config = encoder.config
    encoder.model.to(DTYPES[cfg.dtype]).save_pretrained(folder)  # the config carries is_causal
    tokenizer = _encoder_tokenizer(encoder)
    tokenizer.save_pretrained(folder)
    _check_tokenizer(AutoTokenizer.from_pretrained(folder), encoder)
    modules = [("Transformer", "")]
    if config.pooling == "mean":
        modules.append(("WordWeights", "1_WordWeights"))
        _write_word_weights(folder / "1_WordWeights", tokenizer)
    modules += [("Pooling", f"{len(modules)}_Pooling"), ("Normalize", f"{len(modules) + 1}_Normalize")]
    _write_json(folder / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(modules)])
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": config.max_length, "do_lower_case": False})
    mode = POOLING[config.pooling]
    _write_json(folder / modules[-2][1] / "config.json", {
        "word_embedding_dimension": encoder.dimension, "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": mode == "lasttoken", "include_prompt": False})
    (folder / modules[-1][1]).mkdir()
    query = cfg.query_prompt if cfg.query_prompt is not None else config.prompts.get("query", "")
    prompts = {"query": query, "document": cfg.document_prompt or ""}
    _write_json(folder / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": SENTENCE_TRANSFORMERS_FLOOR},
        "prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine",
        "model_type": "SentenceTransformer"})
    return {"pooling": config.pooling, "st_pooling": mode, "dimension": encoder.dimension,
            "max_length": config.max_length, "dtype": cfg.dtype, "prompts": prompts,
            "matryoshka_dims": sorted(d for d in config.matryoshka_dims if d < encoder.dimension),
            "prompt_layouts": {name: _prompt_matches(tokenizer, encoder, prompt)
                               for name, prompt in prompts.items() if prompt},
            "modules": [kind for kind, _ in modules]}


def _encoder_tokenizer(encoder: Bg2Vec):
    """The encoder's tokenizer, adding exactly its special tokens and able to pad."""
    tokenizer = encoder.tokenizer
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    single = ([bos] if bos is not None else []) + ["$A"]
    if encoder.config.pooling == "last":
        if eos is None:
            raise Bg2VecError("last-token pooling needs the tokenizer's EOS token, and it has none")
        single.append(eos)
    special = [(t, tokenizer.convert_tokens_to_ids(t)) for t in {bos, eos} if t is not None and t in single]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single=single, pair=single + ["$B:1"],
                                                                    special_tokens=special)
    if tokenizer.pad_token is None:  # what Bg2Vec.encode pads with (masked out either way)
        tokenizer.pad_token = eos if eos is not None else tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def _check_tokenizer(reloaded, encoder: Bg2Vec) -> None:
    """The saved tokenizer, as any library loads it, gives the encoder's own token sequences."""
    ours = build_sequences(encoder.tokenizer, PROBES, instruction=None, max_length=encoder.config.max_length,
                           add_bos=True, add_eos=encoder.config.pooling == "last")
    theirs = reloaded(PROBES, truncation=True, max_length=encoder.config.max_length)["input_ids"]
    if [s.ids for s in ours] != theirs:
        raise Bg2VecError(f"the exported {type(reloaded).__name__} does not add the encoder's special tokens "
                          f"(got {theirs[0][:3]}... for {ours[0].ids[:3]}...); this tokenizer class is not supported")


def _prompt_matches(tokenizer, encoder: Bg2Vec, prompt: str) -> bool:
    """Whether sentence-transformers' prompt handling (the prompt prepended to the text, tokenised
    together; its own tokens left out of pooling) gives encode(instruction=prompt)'s tokens and mask."""
    ours = build_sequences(tokenizer, PROBES, instruction=prompt, max_length=encoder.config.max_length,
                           add_bos=True, add_eos=encoder.config.pooling == "last")
    theirs = tokenizer([prompt + text for text in PROBES], truncation=True,
                       max_length=encoder.config.max_length)["input_ids"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    prompt_length = len(prompt_ids) - (prompt_ids[-1] in tokenizer.all_special_ids)
    return [s.ids for s in ours] == theirs and all(s.start == prompt_length for s in ours)


def _write_word_weights(folder: Path, tokenizer) -> None:
    """Weight 1 for every token but the BOS (0): mean pooling over the text's tokens only."""
    folder.mkdir()
    tokens = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    vocab = [t if t is not None else f"<unused-{i}>" for i, t in enumerate(tokens)]
    weights = torch.ones(len(vocab), 1)
    bos = tokenizer.bos_token_id
    if bos is not None:
        weights[bos] = 0.0
    _write_json(folder / "config.json", {"vocab": vocab, "unknown_word_weight": 1.0,
                                         "word_weights": {vocab[bos]: 0.0} if bos is not None else {}})
    save_file({"emb_layer.weight": weights}, str(folder / "model.safetensors"))


def _sentence_transformers():
    """sentence-transformers' SentenceTransformer class (a dependency of bg2vec: the export's check needs it)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise Bg2VecError(f"the export checks the folder it writes with sentence-transformers, which cannot be "
                          f"imported ({e}); pip install sentence-transformers (a dependency of bg2vec)") from None
    return SentenceTransformer


def verify(folder: Path, ours: np.ndarray, cfg: ExportConfig) -> dict:
    """Load the folder with sentence-transformers and compare its embeddings of the probe texts, padded
    left and right, with the float32 encoder's (``ours``); a float32 export must agree to 1e-4."""
    sentence_transformer = _sentence_transformers()
    model = sentence_transformer(str(folder), device="cpu", local_files_only=True,
                                 model_kwargs={"dtype": torch.float32})
    worst = 0.0
    for side in ("right", "left"):
        model.tokenizer.padding_side = side
        theirs = model.encode(PROBES, convert_to_numpy=True, batch_size=len(PROBES))
        worst = max(worst, float(np.abs(theirs - ours).max()))
    limit = 1e-4 if cfg.dtype == "float32" else 5e-2
    if worst > limit:
        raise Bg2VecError(f"the exported folder's sentence-transformers embeddings differ from the encoder's by "
                          f"{worst:.2e} (more than {limit:g}); please report this with the model's config")
    return {"max_abs_diff": worst, "texts": len(PROBES), "padding": ["right", "left"]}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
