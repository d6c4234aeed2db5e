"""jobs/export.py: a trained encoder as a sentence-transformers folder that gives Bg2Vec.encode's embeddings
in a process that never imports bg2vec, with left and right padding; its model card; bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from transformers import AutoConfig, AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.config import load_config
from bg2vec.data.tokens.tokenization import train_bpe_tokenizer
from bg2vec.errors import Bg2VecError
from bg2vec.export.config import ExportConfig
from bg2vec.export.folder import export
from conftest import REPO, write_trained_encoder

pytestmark = pytest.mark.slow

TEXTS = ["Столицата на България е София.", "Кратко.",
         "Рилският манастир е основан през X век от свети Иван Рилски и е най-големият манастир в страната. " * 3,
         "Dogs and котки", "Пловдив е вторият по големина град."]
QUERY_PROMPT = "Намери пасаж, който отговаря на въпроса:\n"

# Run by a fresh interpreter: sentence-transformers alone, padding right then left, the embeddings saved.
ST_SCRIPT = """
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer
folder, out = sys.argv[1:3]
texts = json.loads(sys.stdin.read())
model = SentenceTransformer(folder, device="cpu", local_files_only=True)
for side in ("right", "left"):
    model.tokenizer.padding_side = side
    np.save(f"{out}.{side}.plain.npy", model.encode(texts, batch_size=len(texts)))
    np.save(f"{out}.{side}.query.npy", model.encode_query(texts, batch_size=len(texts)))
    np.save(f"{out}.{side}.document.npy", model.encode_document(texts, batch_size=len(texts)))
assert not [m for m in sys.modules if m.split(".")[0] == "bg2vec"], "bg2vec was imported"
"""


def sentence_transformers_embeddings(folder, tmp_path) -> dict[str, dict[str, np.ndarray]]:
    """{padding side: {"plain" | "query" | "document": embeddings}} from a process without bg2vec."""
    out = tmp_path / "st-embeddings"
    subprocess.run([sys.executable, "-c", ST_SCRIPT, str(folder), str(out)], input=json.dumps(TEXTS),
                   text=True, check=True, capture_output=True, cwd=tmp_path)
    return {side: {kind: np.load(f"{out}.{side}.{kind}.npy") for kind in ("plain", "query", "document")}
            for side in ("right", "left")}


@pytest.fixture(scope="module")
def tokenizer(mistral_tokenizer_dir):
    return AutoTokenizer.from_pretrained(mistral_tokenizer_dir)


def export_config(model, output, *overrides) -> ExportConfig:
    return load_config(ExportConfig, None, [f"model={model}", f"output={output}", *overrides])


@pytest.mark.parametrize("pooling", ["mean", "last", "bos"])
def test_sentence_transformers_gives_bg2vec_s_embeddings_padded_left_and_right(tokenizer, tmp_path, pooling):
    # max_length 24 truncates the long text: both sides must cut it at the same token
    trained = write_trained_encoder(tmp_path / "trained", tokenizer, pooling=pooling, max_length=24)
    summary = export(export_config(trained, tmp_path / "st", "query_prompt=query:"))
    encoder = Bg2Vec.from_pretrained(trained)
    ours = encoder.encode(TEXTS)
    for theirs in sentence_transformers_embeddings(tmp_path / "st", tmp_path).values():
        assert theirs["plain"].shape == ours.shape == (len(TEXTS), 32)
        np.testing.assert_allclose(theirs["plain"], ours, atol=1e-5)
        np.testing.assert_allclose(theirs["document"], ours, atol=1e-5)  # no document prompt
    assert summary["verification"]["max_abs_diff"] <= 1e-5
    # Mistral's tokenizer puts a word-start marker on a text tokenised alone, not after "query:": the
    # export finds that sentence-transformers' prompt gives other tokens, and the card says so
    assert summary["prompt_layouts"] == {"query": False}
    assert "differ slightly from bg2vec's" in (tmp_path / "st" / "README.md").read_text()


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    """The job on an encoder laid out as jobs/pipeline.py writes it (ROOT/simcse, ROOT/eval/results.json)."""
    root = tmp_path_factory.mktemp("exported")
    trained = write_trained_encoder(root / "simcse", tokenizer)
    results = {"base: causal-mean": {"WikiLeadRetrieval": {"ndcg_at_10": 0.25, "mrr_at_10": 0.2}},
               "MNTP + SimCSE": {"WikiLeadRetrieval": {"ndcg_at_10": 0.3125, "mrr_at_10": 0.3}}}
    (root / "eval").mkdir()
    (root / "eval" / "results.json").write_text(json.dumps(results))
    (root / "eval" / "tasks.json").write_text(json.dumps({"WikiLeadRetrieval": {"type": "retrieval",
                                                                               "main_score": "ndcg_at_10"}}))
    result = subprocess.run([sys.executable, "jobs/export.py", "--config", "configs/tiny/export.yaml",
                             f"model={trained}", f"output={root / 'st'}", "name=bg2vec-tiny-test"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root, trained, result.stdout


def test_the_folder_is_merged_safetensors_bidirectional_by_config(exported):
    root, trained, stdout = exported
    folder = root / "st"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json",
            "config_sentence_transformers.json", "1_WordWeights/config.json", "1_WordWeights/model.safetensors",
            "2_Pooling/config.json", "README.md"} <= names
    assert not [n for n in names if n.startswith("adapter") or n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert AutoConfig.from_pretrained(folder).is_causal is False
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "WordWeights", "Pooling", "Normalize"]
    pooling = json.loads((folder / "2_Pooling/config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["include_prompt"] is False
    assert "sentence-transformers gives the encoder's embeddings" in stdout and "padding right and left" in stdout
    # the folder also loads as a base LLM in bg2vec, with the same embeddings
    np.testing.assert_allclose(Bg2Vec.from_pretrained(folder).encode(TEXTS),
                               Bg2Vec.from_pretrained(trained).encode(TEXTS), atol=1e-5)


def test_the_model_card_names_the_base_stages_and_scores(exported):
    root, _, stdout = exported
    # no results= (the preset names none): the pipeline's evaluation beside the model
    assert f"with the pipeline's evaluation beside the model, {root / 'eval' / 'results.json'}" in stdout
    card = (root / "st" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "sentence-transformers" and header["language"] == ["bg"]
    assert "base_model" not in header  # the tiny random base has no Hub id
    [entry] = header["model-index"]
    assert entry["name"] == "bg2vec-tiny-test"
    [result] = entry["results"]
    assert result["task"]["type"] == "retrieval" and result["dataset"]["name"] == "WikiLeadRetrieval"
    assert result["metrics"] == [{"type": "ndcg_at_10", "value": 31.25}]
    assert "| MNTP + SimCSE | 31.25 |" in card and "| base: causal-mean | 25.00 |" in card
    assert "| MNTP |" in card and "| SimCSE |" in card  # the stages, with their hyperparameters
    assert 'SentenceTransformer("bg2vec-tiny-test")' in card


def test_mteb_evaluates_the_folder_through_sentence_transformers(exported):
    """MTEB's own evaluation of the exported folder, through sentence-transformers, scores what it
    scores for the bg2vec encoder through bg2vec's MTEB adapter."""
    import mteb
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask
    from sentence_transformers import SentenceTransformer

    from bg2vec.evaluation.mteb_adapter import run_mteb

    root, trained, _ = exported
    folder_result = mteb.evaluate(SentenceTransformer(str(root / "st"), device="cpu", local_files_only=True),
                                  [MockRetrievalTask()], cache=None, show_progress_bar=False)
    theirs = next(iter(folder_result.task_results[0].scores.values()))[0]
    ours = run_mteb(Bg2Vec.from_pretrained(trained), "tiny", tasks=[MockRetrievalTask()])["MockRetrievalTask"]
    assert theirs["main_score"] == pytest.approx(ours["main_score"], abs=1e-6)
    assert theirs["ndcg_at_10"] == pytest.approx(ours["ndcg_at_10"], abs=1e-6)


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tokenizer, tmp_path, monkeypatch):
    """The upload itself needs the Hub; what reaches huggingface_hub's API is checked here."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hf.co/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    trained = write_trained_encoder(tmp_path / "trained", tokenizer)
    summary = export(export_config(trained, tmp_path / "st", "push_to_hub=me/bg2vec-tiny"))
    assert calls[0] == ("create", "me/bg2vec-tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[1][1]["folder_path"] == str(tmp_path / "st") and calls[1][1]["repo_id"] == "me/bg2vec-tiny"
    assert summary["hub_url"] == "https://hf.co/me/bg2vec-tiny"
    assert 'SentenceTransformer("me/bg2vec-tiny")' in (tmp_path / "st" / "README.md").read_text()


def test_without_an_evaluation_beside_the_model_the_card_has_none(tokenizer, tmp_path, monkeypatch):
    """A pipeline's stage folder without its eval/: the card has no evaluation and the job says so; a
    results= that does not exist is an error naming it."""
    import importlib.util

    import bg2vec.interrupts

    monkeypatch.setattr(bg2vec.interrupts, "stop_on_sigterm", lambda: None)  # pytest keeps its SIGTERM
    spec = importlib.util.spec_from_file_location("export_job", REPO / "jobs" / "export.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    trained = write_trained_encoder(tmp_path / "run" / "simcse", tokenizer)
    printed = job.main(export_config(trained, tmp_path / "st"))
    assert "README.md, with no evaluation table (none beside the model; results= names an evaluation's " \
           "results.json)" in printed
    card = (tmp_path / "st" / "README.md").read_text()
    assert "## Evaluation" not in card and "model-index" not in yaml.safe_load(card.split("---")[1])
    missing = tmp_path / "run" / "eval" / "results.json"
    with pytest.raises(Bg2VecError, match="^" + re.escape(f"results={missing}: no such file; pass an evaluation's")):
        export(export_config(trained, tmp_path / "st2", f"results={missing}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "st"]


def test_without_sentence_transformers_the_export_stops_before_writing(tokenizer, tmp_path, monkeypatch):
    """The check is never skipped: a missing sentence-transformers is a clear error before the merge."""
    trained = write_trained_encoder(tmp_path / "trained", tokenizer)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # `import sentence_transformers` fails
    with pytest.raises(Bg2VecError, match="checks the folder it writes with sentence-transformers, which cannot be "
                                          "imported .*; pip install sentence-transformers"):
        export(export_config(trained, tmp_path / "st"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trained"]  # no folder, no staging folder


def test_bad_inputs_are_named_and_leave_no_folder(tokenizer, tmp_path):
    trained = write_trained_encoder(tmp_path / "trained", tokenizer)
    with pytest.raises(Bg2VecError, match="not a trained bg2vec directory"):
        export(export_config(tmp_path / "nothing", tmp_path / "a"))
    with pytest.raises(Bg2VecError, match="no row 'MNTP \\+ SimCSE'"):
        (tmp_path / "results.json").write_text(json.dumps({"other": {}}))
        export(export_config(trained, tmp_path / "b", f"results={tmp_path / 'results.json'}"))
    weighted = write_trained_encoder(tmp_path / "weighted", tokenizer, pooling="weighted_mean")
    with pytest.raises(Bg2VecError, match="weighted_mean.*no sentence-transformers equivalent"):
        export(export_config(weighted, tmp_path / "c"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(Bg2VecError, match="already exists"):
        export(export_config(trained, tmp_path / "d"))
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert not list(tmp_path.glob(".*.tmp-*"))  # no staging folder left behind
    result = subprocess.run([sys.executable, "jobs/export.py", f"model={tmp_path / 'nothing'}",
                             f"output={tmp_path / 'e'}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "not a trained bg2vec directory" in result.stderr
    result = subprocess.run([sys.executable, "jobs/export.py", f"model={trained}", f"output={tmp_path / 'e'}",
                             "dtype=int4"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "dtype" in result.stderr


def test_a_gemma_3_encoder_exports_with_tied_embeddings_and_sliding_windows(tmp_path):
    """The packaged pretrained Gemma-3-270M base with a LoRA stage: the folder gives the encoder's
    embeddings through sentence-transformers, padded left and right."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from bg2vec.modeling import packaged
    from bg2vec.modeling.encoder import EncoderConfig, write_encoder_files

    base = packaged.resolve("packaged:gemma-3-270m")
    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    trained = tmp_path / "trained"
    model.save_pretrained(trained)
    write_encoder_files(trained, AutoTokenizer.from_pretrained(base), EncoderConfig(
        base_model="packaged:gemma-3-270m", family="gemma3_text", max_length=64,
        stages=[{"name": "simcse", "adapter": ".", "hyperparameters": {}}]))
    summary = export(export_config(trained, tmp_path / "st", f"query_prompt={QUERY_PROMPT}"))
    assert AutoConfig.from_pretrained(tmp_path / "st").is_causal is False
    assert summary["prompt_layouts"] == {"query": True}  # Gemma tokenises prompt + text as bg2vec does
    encoder = Bg2Vec.from_pretrained(trained)
    ours, ours_query = encoder.encode(TEXTS), encoder.encode(TEXTS, instruction=QUERY_PROMPT)
    assert not np.allclose(ours_query, ours, atol=1e-3)  # the prompt matters: the comparison below can fail
    for theirs in sentence_transformers_embeddings(tmp_path / "st", tmp_path).values():
        np.testing.assert_allclose(theirs["plain"], ours, atol=1e-5)
        np.testing.assert_allclose(theirs["query"], ours_query, atol=1e-5)
    header = yaml.safe_load((tmp_path / "st" / "README.md").read_text().split("---")[1])
    assert header["base_model"] == "google/gemma-3-270m" and header["license"] == "gemma"
    assert summary["dimension"] == 640


def test_a_contrastive_encoder_exports_its_query_prompt_and_matryoshka_dimensions(tmp_path):
    """The contrastive stage's prompts["query"] becomes the folder's query prompt (encode_query gives
    bg2vec's encode(instruction=...)); its Matryoshka dimensions are sentence-transformers' truncate_dim."""
    from sentence_transformers import SentenceTransformer

    # a byte-level BPE tokenises "prompt + text" as prompt and text apart: the comparison is exact
    tokenizer = train_bpe_tokenizer(iter(TEXTS * 20), vocab_size=300)
    trained = write_trained_encoder(tmp_path / "trained", tokenizer, stages=("mntp", "contrastive"),
                                    prompts={"query": "Намери пасаж:\n"}, matryoshka_dims=[16, 8])
    summary = export(export_config(trained, tmp_path / "st"))
    assert summary["prompts"] == {"query": "Намери пасаж:\n", "document": ""}
    assert summary["prompt_layouts"] == {"query": True} and summary["matryoshka_dims"] == [8, 16]
    encoder = Bg2Vec.from_pretrained(trained)
    ours, ours_query = encoder.encode(TEXTS), encoder.encode(TEXTS, instruction="Намери пасаж:\n")
    assert not np.allclose(ours_query, ours, atol=1e-3)  # the prompt matters: the comparison below can fail
    for theirs in sentence_transformers_embeddings(tmp_path / "st", tmp_path).values():
        np.testing.assert_allclose(theirs["plain"], ours, atol=1e-5)
        np.testing.assert_allclose(theirs["query"], ours_query, atol=1e-5)
    truncated = SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True, truncate_dim=8)
    np.testing.assert_allclose(truncated.encode(TEXTS), ours[:, :8], atol=1e-5)
    card = (tmp_path / "st" / "README.md").read_text()
    assert "matryoshka" in yaml.safe_load(card.split("---")[1])["tags"]
    assert 'SentenceTransformer("st", truncate_dim=16)' in card and "leading 8 / 16 of the 32 dimensions" in card
    assert "queries = model.encode([\"Коя е столицата на България?\"], instruction='Намери пасаж:\\n')" in card
    # an explicit query_prompt wins: query_prompt="" exports none
    plain = export(export_config(trained, tmp_path / "plain", 'query_prompt=""'))
    assert plain["prompts"]["query"] == "" and plain["prompt_layouts"] == {}
    assert "encode_query" not in (tmp_path / "plain" / "README.md").read_text()
