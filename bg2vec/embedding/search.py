"""``jobs/search.py``: one query against an embedded and indexed corpus, printed as its top passages."""

from __future__ import annotations

import re
import time

from bg2vec.embedding.config import SearchConfig
from bg2vec.embedding.index import SearchIndex, describe
from bg2vec.errors import Bg2VecError
from bg2vec.storage import localize, redact


def choose(index: SearchIndex, cfg: SearchConfig) -> tuple[str, str]:
    """(precision, rescore) that ``cfg``'s autos stand for on this index."""
    precision = cfg.precision if cfg.precision != "auto" else next(
        p for p in ("float32", "binary", "int8") if p in index.precisions)
    rescore = cfg.rescore
    if precision == "float32":
        rescore = "none"  # nothing to rescore: the float vectors are what is searched
    elif rescore == "auto":
        rescore = "int8" if "int8" in index.precisions else precision
    return precision, rescore


def snippet(text: str, max_chars: int) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0] or text[:max_chars]
    return f"{cut.rstrip(' .,;:')}..."


def search(cfg: SearchConfig) -> str:
    """Print what is opened and loaded; returns the results as text."""
    from bg2vec import Bg2Vec

    index = SearchIndex(cfg.index)
    manifest = index.manifest
    precision, rescore = choose(index, cfg)
    index.load(precision, rescore)  # damaged files are named before the encoder loads, not after
    kind = manifest["indexes"][precision]["kind"]
    print(f"opened the index of {redact(cfg.index)}: {manifest['passages']} passages, "
          f"{describe(manifest['indexes'])}", flush=True)
    model = cfg.model or manifest["encoder"]["model"]
    if "***" in model:
        raise Bg2VecError(f"the index's encoder {model} was saved without its credentials; pass model= the encoder "
                          f"that embedded the corpus")
    print(f"loading the encoder {redact(model)}", flush=True)
    encoder = Bg2Vec.from_pretrained(localize(model))
    if encoder.dimension != index.dimension:
        raise Bg2VecError(f"model {redact(model)} gives {encoder.dimension}-d vectors but the index holds "
                          f"{index.dimension}-d ones; pass model= the encoder that embedded the corpus")
    instruction = cfg.instruction if cfg.instruction is not None else encoder.config.prompts.get("query")
    if instruction:
        print(f"the query gets the instruction {instruction!r}", flush=True)
    query = encoder.encode([cfg.query], instruction=instruction or None, normalize=manifest["encoder"]["normalize"])
    started = time.perf_counter()
    scores, ids = index.search(query, cfg.top_k, precision, rescore, cfg.rescore_multiplier, cfg.ef_search,
                               cfg.nprobe)
    milliseconds = (time.perf_counter() - started) * 1000
    hits = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
    how = f"{precision} {kind} index" + (f", rescored with {rescore} x{cfg.rescore_multiplier}"
                                          if rescore != "none" else "")
    lines = [f"top {len(hits)} of {manifest['passages']} passages for {cfg.query!r} ({how}, {milliseconds:.1f} ms):"]
    for rank, ((score, _), row) in enumerate(zip(hits, index.passages([i for _, i in hits])), 1):
        title = row.get("title") or "(no title)"
        lines.append(f"{rank:3d}. {score:.4f}  {title}  (id {row['id']}, passage {row['passage_index']})")
        lines.append(f"     {snippet(row['passage'], cfg.max_chars)}")
    return "\n".join(lines)
