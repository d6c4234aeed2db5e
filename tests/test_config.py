"""Typed configs: every preset loads, overrides are typed by their field, mistakes are named."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from bg2vec.config import describe, field_docs, load_config
from bg2vec.data.config import CleaningConfig, PrepareConfig, TokenizerConfig
from bg2vec.embedding.config import EmbedConfig, SearchConfig
from bg2vec.errors import ConfigError
from bg2vec.evaluation.config import EvaluateConfig
from bg2vec.export.config import ExportConfig
from bg2vec.pairs.config import PairsConfig
from bg2vec.planning import PlanConfig
from bg2vec.serving.config import ServeConfig
from bg2vec.training.config import ContrastiveConfig, MNTPConfig, SimCSEConfig
from bg2vec.tuning.search import TuneConfig
from conftest import REPO

# Every YAML under configs/<preset>/ is named after its stage; a new stage registers its class here.
STAGE_CONFIGS = {"prepare": PrepareConfig, "mntp": MNTPConfig, "simcse": SimCSEConfig,
                 "contrastive": ContrastiveConfig, "evaluate": EvaluateConfig, "tune": TuneConfig, "plan": PlanConfig,
                 "embed": EmbedConfig, "serve": ServeConfig, "search": SearchConfig, "export": ExportConfig,
                 "pairs": PairsConfig, "tune_contrastive": TuneConfig}
REQUIRED_OVERRIDES = {"prepare": ["output=/tmp/out"], "mntp": [], "simcse": [], "contrastive": [], "evaluate": [],
                      "tune": [], "plan": [], "embed": [], "search": ["query=столица"], "serve": [], "export": [],
                      "pairs": [], "tune_contrastive": []}


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_loads(path):
    cls = STAGE_CONFIGS.get(path.stem)
    assert cls is not None, f"{path} has no registered config class"
    cfg = load_config(cls, str(path), REQUIRED_OVERRIDES[path.stem])
    assert isinstance(cfg, cls)


@pytest.mark.parametrize("stage", ["prepare", "mntp", "simcse"])
def test_presets_cover_tiny_and_bggpt(stage):
    presets = {p.parent.name for p in REPO.glob(f"configs/*/{stage}.yaml")}
    assert {"tiny", "bggpt-7b", "bggpt-gemma2-9b"} <= presets


def test_overrides_are_converted_by_field_type(tmp_path):
    cfg = load_config(PrepareConfig, None, [
        "dump=d.xml", "output=2024", "seq_len=128", "validation_fraction=0", "salvage=true",
        "cleaning.min_text_chars=5", "cleaning.drop_sections=[Източници, See also]",
        "tokenizer.name_or_path=null", "max_workers=3", "range_mb=0.5"])
    assert cfg.output == "2024"  # a string field keeps the text, YAML would have made it an int
    assert cfg.seq_len == 128 and cfg.validation_fraction == 0.0 and cfg.salvage is True
    assert cfg.cleaning.min_text_chars == 5
    assert cfg.cleaning.drop_sections == ["Източници", "See also"]
    assert cfg.tokenizer.name_or_path is None and cfg.max_workers == 3 and cfg.range_mb == 0.5
    assert load_config(PrepareConfig, None, ["dump=d", "output=o", "range_mb=5e-1"]).range_mb == 0.5
    assert cfg.tokenizer.train_vocab_size == TokenizerConfig().train_vocab_size  # untouched default


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dump: a.xml\noutput: out\nseq_len: 64\ncleaning:\n  min_text_chars: 7\n")
    cfg = load_config(PrepareConfig, str(path), ["seq_len=32"])
    assert (cfg.dump, cfg.seq_len, cfg.cleaning.min_text_chars) == ("a.xml", 32, 7)


@pytest.mark.parametrize("overrides, message", [
    (["dump=a", "output=b", "seq_lenn=5"], "unknown key 'seq_lenn' (did you mean 'seq_len'?)"),
    (["dump=a", "output=b", "cleaning.min_txt_chars=5"],
     "unknown key 'cleaning.min_txt_chars' (did you mean 'cleaning.min_text_chars'?)"),
    (["dump=a", "output=b", "seq_len=abc"], "seq_len must be an integer, got 'abc'"),
    (["dump=a", "output=b", "salvage=maybe"], "salvage must be true or false"),
    (["dump=a", "output=b", "cleaning.drop_sections=Bad"], "cleaning.drop_sections must be a list"),
    (["dump=a", "output=b", "cleaning=5"], "cleaning must be a section of keys"),
    (["output=b"], "missing required key 'dump'"),
    (["dump=a", "output=b", "validation_fraction=1.5"], "validation_fraction must be in [0, 1)"),
    (["dump=a", "output=b", "seq_len=4"], "seq_len must be at least 8"),
    (["dump=a", "output=b", "tokenizer.train_vocab_size=100"], "train_vocab_size must be at least 300"),
    (["dump=a", "output=b", "novalue"], "not of the form key=value"),
])
def test_mistakes_are_named(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(PrepareConfig, None, overrides)
    assert message in str(e.value)


def test_file_mistakes_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dump: a\noutput: b\nseq_len: '128'\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: seq_len must be an integer"):
        load_config(PrepareConfig, str(path))
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(PrepareConfig, str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PrepareConfig, str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("cls", [PrepareConfig, CleaningConfig, TokenizerConfig])
def test_every_field_is_documented(cls):
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    undocumented = [f.name for f in dataclasses.fields(cls)
                    if f.name not in docs and not dataclasses.is_dataclass(hints[f.name])]
    assert not undocumented


def test_describe_lists_nested_keys_with_docs():
    text = describe(PrepareConfig)
    assert "cleaning.max_page_seconds (float; default: 10.0)" in text
    assert "dump (str; required)" in text
    assert "tokenizer.name_or_path (str | null; default: None)" in text


def _job(*args):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "prepare_data.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_job_help_and_config_errors():
    shown = _job("--help")
    assert shown.returncode == 0
    assert "cleaning.max_page_seconds" in shown.stdout and "ray job submit" in shown.stdout
    bad = _job("--config", "configs/tiny/prepare.yaml", "output=/tmp/x", "seq_lenn=3")
    assert bad.returncode == 2
    assert "unknown key 'seq_lenn'" in bad.stderr and "Traceback" not in bad.stderr
