"""No command destroys a user's data, and mistakes are named: an output that is, is inside or contains a
job's input is refused by every job whatever ``overwrite`` says (the input left as it was); unreadable config
files, damaged index files and missing models are one-paragraph errors. In process, before anything loads;
the job commands themselves: tests/test_job_mistakes.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.config import load_config
from bg2vec.data.config import PrepareConfig
from bg2vec.embedding.config import EmbedConfig
from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.evaluation.config import EvaluateConfig
from bg2vec.export.config import ExportConfig
from bg2vec.serving.inputs import CHARS_PER_TOKEN, MARGIN, fit_inputs
from bg2vec.storage import check_apart, missing_location
from bg2vec.training.config import MNTPConfig, SimCSEConfig
from conftest import REPO, write_trained_encoder


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("output, relation", [
    ("model", "is"), ("model/", "is"), ("model/./sub/..", "is"), ("model/export", "is inside"),
    ("", "contains"), ("link", "is"), ("link/x", "is inside"), ("model-export", None), ("other", None)])
def test_an_output_is_refused_when_it_is_inside_or_contains_an_input(tmp_path, output, relation):
    (tmp_path / "model").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "model")
    given = str(tmp_path / output) if output else str(tmp_path)
    if relation is None:
        check_apart(given, {"model": str(tmp_path / "model"), "data": None, "base": "org/name"})
        return
    with pytest.raises(Bg2VecError) as e:
        check_apart(given, {"data": str(tmp_path / "elsewhere"), "model": str(tmp_path / "model")})
    assert str(e.value).startswith(f"output={given} {relation} model={tmp_path / 'model'}: writing there could "
                                   f"delete the model")


def test_uris_are_compared_by_bucket_and_path():
    check_apart("s3://bucket/runs/b?region=x", {"model": "s3://bucket/runs/a"})
    check_apart("gs://bucket/runs/a/x", {"model": "s3://bucket/runs/a"})  # another store
    with pytest.raises(Bg2VecError, match="is inside model=s3://bucket/runs/a/"):
        check_apart("s3://bucket/runs/a/x?region=x", {"model": "s3://bucket/runs/a/"})
    with pytest.raises(Bg2VecError, match=r"output=s3://\*\*\*@bucket/runs contains data="):
        check_apart("s3://key:secret@bucket/runs", {"data": "s3://bucket/runs/a"})


def test_models_that_name_a_missing_location(tmp_path):
    assert missing_location(str(tmp_path / "none")) and missing_location("runs/demo/none")
    assert missing_location("./none") and missing_location("~/no-such-bg2vec-model")
    assert not missing_location(str(tmp_path)) and not missing_location("BAAI/bge-m3")
    assert not missing_location("tiny:mistral") and not missing_location("packaged:gemma-3-270m")


@pytest.fixture
def layout(tmp_path):
    """A trained model, a prepared directory and a dump, as files the refused jobs must leave alone."""
    for name in ("model", "data", "mntp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(f'{{"{name}": 1}}')
    (tmp_path / "data" / "dump.xml").write_text("<mediawiki/>")
    return tmp_path


def refused(run, cls, config: str, overrides: list[str], message: str, root: Path) -> None:
    before = tree(root)
    cfg = load_config(cls, str(REPO / "configs/tiny" / config), [*overrides, "overwrite=true"])
    with pytest.raises(Bg2VecError, match=message):
        run(cfg)
    assert tree(root) == before


def test_every_job_with_an_output_refuses_one_over_its_inputs(layout):
    from bg2vec.data.pipeline import prepare
    from bg2vec.embedding.pipeline import embed
    from bg2vec.evaluation.runner import evaluate
    from bg2vec.export.folder import export
    from bg2vec.training.launch import run_stage

    d = {name: str(layout / name) for name in ("model", "data", "mntp")}
    refused(prepare, PrepareConfig, "prepare.yaml", [f"dump={d['data']}/dump.xml", f"output={d['data']}"],
            "output=.* contains dump=", layout)
    refused(run_stage, MNTPConfig, "mntp.yaml", [f"data={d['data']}", f"output={layout}"], "contains data=", layout)
    refused(run_stage, SimCSEConfig, "simcse.yaml", [f"data={d['data']}", f"mntp={d['mntp']}",
                                                     f"output={d['mntp']}/simcse"], "is inside mntp=", layout)
    refused(embed, EmbedConfig, "embed.yaml", [f"model={d['model']}", f"input={d['data']}", f"output={d['data']}"],
            "is input=", layout)
    refused(evaluate, EvaluateConfig, "evaluate.yaml", [f"model={d['model']}", f"data={d['data']}",
                                                        f"output={d['model']}/eval"], "is inside model=", layout)
    refused(export, ExportConfig, "export.yaml", [f"model={d['model']}", f"output={layout}"], "contains model=", layout)


def test_config_files_that_cannot_be_read_are_named(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("output: runs/x\nname: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(ExportConfig, str(tmp_path / "latin1.yaml"))
    assert str(e.value) == f"config file {tmp_path / 'latin1.yaml'} is not UTF-8 text (byte 0xe9 on line 2); save it " \
                           f"as UTF-8"
    with pytest.raises(ConfigError, match="is a folder; pass --config one YAML file"):
        load_config(ExportConfig, str(REPO / "configs/tiny"))


def test_damaged_index_files_are_named(tmp_path):
    from test_search import indexed, unit_vectors

    index = indexed(tmp_path / "out", unit_vectors(np.random.default_rng(0), 50), precisions=("float32", "int8"))
    index.load("float32")  # the files as built open
    faiss_file, npy_file = tmp_path / "out/index/float32.faiss", tmp_path / "out/index/int8.npy"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    npy_file.write_bytes(b"\0" * npy_file.stat().st_size)  # the size the manifest says, not an .npy
    from bg2vec.embedding.index import SearchIndex

    index = SearchIndex(str(tmp_path / "out"))
    with pytest.raises(Bg2VecError) as e:
        index.load("float32")
    out = tmp_path / "out"
    assert f"index file {out}/index/float32.faiss has 100 bytes where the index manifest says" in str(e.value)
    assert f"remove {out}/index and {out}/manifest.json and run jobs/embed.py again" in str(e.value)
    with pytest.raises(Bg2VecError, match=r"index/int8.npy cannot be read \(.*\): it is damaged or truncated"):
        index.load("int8", rescore="int8")


@pytest.fixture(scope="module")
def encoder(mistral_tokenizer_dir, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    return Bg2Vec.from_pretrained(write_trained_encoder(tmp_path_factory.mktemp("fit") / "enc", tokenizer,
                                                        max_length=24), device="cpu")


def test_long_inputs_are_cut_before_tokenising_to_what_the_encoder_reads(encoder):
    """A cut text gives encode the whole text's first max_length tokens, so the same vector; short texts are
    not cut and are counted exactly; only prefixes are ever tokenised."""
    limit = encoder.config.max_length
    words = "София е столицата и най-големият град на България, разположен в Софийската котловина. "
    spaces = " " * (limit * CHARS_PER_TOKEN * 20) + "край"  # 16 spaces a token: the first cut gives too few
    texts = ["Кратко.", words * 2000, spaces, words[:60]]
    seen = []

    def counting(prefixes):
        seen.extend(len(p) for p in prefixes)
        return encoder.token_counts(prefixes)

    fitted = fit_inputs(counting, texts, limit)
    assert fitted.cut == [False, True, True, False]
    assert fitted.texts[0] == texts[0] and fitted.texts[3] == texts[3]
    assert len(fitted.texts[1]) == limit * CHARS_PER_TOKEN and texts[1].startswith(fitted.texts[1])
    assert len(fitted.texts[2]) == 4 * limit * CHARS_PER_TOKEN  # lengthened twice
    assert fitted.counts[0] == encoder.token_counts([texts[0]])[0] and fitted.counts[3] == encoder.token_counts(
        [texts[3]])[0]
    assert all(n >= limit + MARGIN for n, cut in zip(fitted.counts, fitted.cut) if cut)
    assert max(seen) < len(texts[1]) / 100  # the 170,000-character text was never tokenised whole
    np.testing.assert_allclose(encoder.encode(fitted.texts), encoder.encode(texts), atol=1e-6)


def test_no_staging_folder_or_output_after_a_refusal(tmp_path):
    """The export checks its output before loading anything: under a regular file is refused at once."""
    from bg2vec.export.folder import export

    (tmp_path / "file").write_text("x")
    cfg = load_config(ExportConfig, str(REPO / "configs/tiny/export.yaml"),
                      [f"model={REPO / 'nothing-here'}", f"output={tmp_path / 'file' / 'export'}"])
    with pytest.raises(Bg2VecError, match="not a trained bg2vec directory"):
        export(cfg)  # the model is checked first, and is missing
    model = tmp_path / "model"
    model.mkdir()
    (model / "bg2vec_config.json").write_text("{not json: loading it would fail}")
    cfg = load_config(ExportConfig, str(REPO / "configs/tiny/export.yaml"),
                      [f"model={model}", f"output={tmp_path / 'file' / 'export'}"])
    with pytest.raises(Bg2VecError, match=f"{tmp_path / 'file'} is a file, not a folder"):
        export(cfg)
    assert sorted(os.listdir(tmp_path)) == ["file", "model"]
