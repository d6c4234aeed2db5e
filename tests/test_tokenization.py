"""Tokenizers: the trained default, a real one, and the Ray Data stage's output."""

from __future__ import annotations

import pyarrow as pa
import pytest
from transformers import AutoTokenizer

from bg2vec.data.stages import TokenizeDocs
from bg2vec.data.tokens.tokenization import load_tokenizer, train_bpe_tokenizer
from bg2vec.errors import Bg2VecError

TEXTS = ["София е столицата на България.", "Рила е най-високата планина на Балканите.",
         "Кирилицата е азбука, създадена в Първото българско царство."] * 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tok = train_bpe_tokenizer(iter(TEXTS), vocab_size=400)
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return tok, path


def test_trained_tokenizer_round_trips_and_reloads(trained):
    tok, path = trained
    assert len(tok) <= 400 and tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    text = "Пловдив и ÅÄÖ ← 日本"  # unseen characters still encode (byte-level)
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    reloaded = AutoTokenizer.from_pretrained(path)
    assert reloaded(text)["input_ids"] == ids
    assert len(tok("_", add_special_tokens=False)["input_ids"]) == 1  # the "blank" MNTP mask token


def test_training_is_deterministic():
    a = train_bpe_tokenizer(iter(TEXTS), vocab_size=400)
    b = train_bpe_tokenizer(iter(TEXTS), vocab_size=400)
    assert a.get_vocab() == b.get_vocab()


def test_real_mistral_tokenizer(mistral_tokenizer_dir):
    tok = load_tokenizer(str(mistral_tokenizer_dir))
    assert tok.is_fast and (tok.bos_token_id, tok.eos_token_id, len(tok)) == (1, 2, 32768)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(Bg2VecError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))


def test_tokenize_stage_adds_bos_eos_and_title(mistral_tokenizer_dir):
    tok = load_tokenizer(str(mistral_tokenizer_dir))
    stage = TokenizeDocs(tok.backend_tokenizer.to_str(), tok.bos_token_id, tok.eos_token_id, include_title=True)
    batch = pa.table({"title": ["София", "Рила"], "text": ["Столица.", "Планина."],
                      "split": ["train", "validation"]})
    out = stage(batch)
    assert out["split"].to_pylist() == ["train", "validation"]
    expected = [[1] + tok("София\n\nСтолица.", add_special_tokens=False)["input_ids"] + [2],
                [1] + tok("Рила\n\nПланина.", add_special_tokens=False)["input_ids"] + [2]]
    assert out["input_ids"].to_pylist() == expected
    no_title = TokenizeDocs(tok.backend_tokenizer.to_str(), None, 2, include_title=False)(batch)
    assert no_title["input_ids"].to_pylist()[0] == tok("Столица.", add_special_tokens=False)["input_ids"] + [2]
