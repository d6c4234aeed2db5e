"""Tokenizers: load a Hugging Face one, or train the embedded default's small BPE (driver side)."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from bg2vec.errors import Bg2VecError

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def load_tokenizer(name_or_path: str, revision: str | None = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A fast (Rust-backed) Hugging Face tokenizer from a hub id, a local folder or a packaged model."""
    from bg2vec.modeling.packaged import resolve

    try:
        tok = AutoTokenizer.from_pretrained(resolve(name_or_path), revision=revision,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise Bg2VecError(
            f"cannot load tokenizer {name_or_path!r}: {e}. Give a local folder with tokenizer.json, "
            f"or a hub id (needs network access, and HF_TOKEN for gated models)") from None
    if not tok.is_fast:
        raise Bg2VecError(f"tokenizer {name_or_path!r} has no fast (Rust) implementation "
                          f"(tokenizer.json); bg2vec needs one for speed")
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` (no unknown characters possible; BOS added like Llama's)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
