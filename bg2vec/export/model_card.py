"""The exported folder's model card (README.md in the Hugging Face format).

Its YAML header (huggingface_hub's ModelCardData) names the base model, license, library and, from
an evaluation's results.json, the scores as ``model-index``; the body says how the encoder was made
(base, data, stages and their hyperparameters), gives the evaluation table and how to use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from bg2vec.errors import Bg2VecError
from bg2vec.evaluation.models import STAGE_LABELS
from bg2vec.modeling import packaged
from bg2vec.pipeline_layout import LAST_WRITTEN, OUTPUTS, TRAINING
from bg2vec.storage import redact

TASKS_NAME = "tasks.json"  # beside results.json: each task's type and main metric (jobs/evaluate.py)
HIDDEN_HYPERPARAMETERS = {"data"}  # shown in the data section instead


def results_file(cfg) -> Path | None:
    """The evaluation for the card: ``results=`` (which must exist), else the pipeline's beside the model
    (DIR/eval/results.json for model=DIR/<stage>) when it is there, else None."""
    if cfg.results is not None:
        if not Path(cfg.results).is_file():
            raise Bg2VecError(f"results={cfg.results}: no such file; pass an evaluation's results.json "
                              f"(jobs/evaluate.py's output), or leave results= out to use the pipeline's evaluation "
                              f"beside the model when there is one")
        return Path(cfg.results)
    model = Path(os.path.abspath(cfg.model))
    beside = model.parent / OUTPUTS["evaluate"] / LAST_WRITTEN["evaluate"]
    return beside if model.name in TRAINING and beside.is_file() else None


def write_card(folder: Path, encoder, cfg, summary: dict) -> None:
    """README.md in ``folder``; the evaluation table from ``summary["results"]`` (None: no evaluation)."""
    config = encoder.config
    name = cfg.name or (cfg.push_to_hub.split("/")[-1] if cfg.push_to_hub else Path(cfg.output).name)
    base_id, base_license = _base(config.base_model)
    label = " + ".join(STAGE_LABELS.get(s["name"], s["name"]) for s in config.stages)
    evaluation = _evaluation(summary["results"], cfg.results_name, label)
    data = ModelCardData(
        model_name=name, base_model=base_id, language=cfg.language, license=cfg.license or base_license,
        library_name="sentence-transformers", pipeline_tag="sentence-similarity",
        tags=["sentence-transformers", "sentence-similarity", "feature-extraction", "bg2vec", "llm2vec",
              *(["matryoshka"] if summary["matryoshka_dims"] else [])],
        eval_results=evaluation["results"] if evaluation else None)
    body = [f"# {name}", "",
            f"A text encoder made from the decoder LLM `{_shown_base(config.base_model)}` with "
            f"bg2vec and the [LLM2Vec](https://arxiv.org/abs/2404.05961) "
            f"recipe ({label or 'no training'}): bidirectional attention, {config.pooling} pooling, "
            f"{summary['dimension']}-dimensional L2-normalised embeddings, inputs up to {config.max_length} "
            f"tokens. The LoRA adapters of every stage are merged into the weights ({summary['dtype']}).", "",
            *_training(config), *_evaluation_section(evaluation), *_usage(name, cfg, summary)]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n").save(folder / "README.md")


def _base(base_model: str) -> tuple[str | None, str]:
    """(the base's Hub id when it has one, its license id for the card)."""
    if packaged.is_packaged(base_model):
        spec = packaged.PACKAGED[base_model[len(packaged.PREFIX):]]
        return spec.upstream.split()[0], "gemma" if "Gemma" in spec.license else "other"
    if base_model.count("/") == 1 and not Path(base_model).exists():
        return base_model, "other"
    return None, "other"  # a local folder (the tiny presets' random base): no Hub id to link


def _shown_base(base_model: str) -> str:
    if packaged.is_packaged(base_model):
        return packaged.PACKAGED[base_model[len(packaged.PREFIX):]].upstream
    return redact(base_model)


def _training(config) -> list[str]:
    if not config.stages:
        return []
    lines = ["## Training", "", "| stage | data | hyperparameters |", "|---|---|---|"]
    for stage in config.stages:
        hyper = stage.get("hyperparameters", {})
        shown = ", ".join(f"{k} {v}" for k, v in hyper.items() if k not in HIDDEN_HYPERPARAMETERS)
        lines.append(f"| {STAGE_LABELS.get(stage['name'], stage['name'])} | {_data(hyper.get('data'))} | {shown} |")
    return [*lines, ""]


def _data(path: str | None) -> str:
    """The prepared data a stage trained on: its dump and size, from the manifest when it is readable here."""
    if path is None:
        return "not recorded"
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return f"`{path}`"
    m = json.loads(manifest.read_text())
    source, counts = m.get("source", {}), m.get("counts", {})
    tokens = sum(counts.get("tokens", {}).values())
    return (f"{source.get('display') or source.get('uri') or path}: {counts.get('pages_kept', '?')} pages, "
            f"{tokens:,} tokens")


def _evaluation(path: Path | None, results_name: str | None, label: str) -> dict | None:
    if path is None:
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Bg2VecError(f"results={path} is not JSON ({e}); pass an evaluation's results.json") from None
    row = results_name or label
    if row not in results:
        raise Bg2VecError(f"results={path} has no row {row!r} (rows: {', '.join(results)}); "
                          f"set results_name= to the row of this encoder, or results= to its evaluation")
    tasks_file = path.with_name(TASKS_NAME)
    tasks = json.loads(tasks_file.read_text()) if tasks_file.is_file() else {}
    main = {task: tasks.get(task, {}).get("main_score") or next(iter(scores)) for task, scores in results[row].items()}
    evals = [EvalResult(task_type=tasks.get(task, {}).get("type", "other"), dataset_type=f"bg2vec/{task}",
                        dataset_name=task, metric_type=metric, metric_value=round(100 * results[row][task][metric], 2))
             for task, metric in main.items()]
    return {"row": row, "results": evals, "table": results, "main": main}


def _evaluation_section(evaluation: dict | None) -> list[str]:
    if evaluation is None:
        return []
    main, table = evaluation["main"], evaluation["table"]
    lines = ["## Evaluation", "", f"Main score of each task x 100 (this model: **{evaluation['row']}**; the other rows "
             "are the baselines of the same evaluation run).", "",
             "| model | " + " | ".join(f"{t} ({m})" for t, m in main.items()) + " |", "|---" * (len(main) + 1) + "|"]
    for model, scores in table.items():
        values = [f"{100 * scores[t][m]:.2f}" if t in scores and m in scores[t] else "" for t, m in main.items()]
        lines.append(f"| {model} | " + " | ".join(values) + " |")
    return [*lines, ""]


def _usage(name: str, cfg, summary: dict) -> list[str]:
    where = cfg.push_to_hub or name
    prompts = summary["prompts"]
    query = ("model.encode_query([\"Коя е столицата на България?\"])" if prompts["query"]
             else "model.encode([\"Коя е столицата на България?\"])")
    lines = ["## Usage", "", "With sentence-transformers (>= 5):", "", "```python",
             "from sentence_transformers import SentenceTransformer", "",
             f"model = SentenceTransformer(\"{where}\")",
             f"queries = {query}",
             "documents = model.encode([\"София е столицата и най-големият град на България.\"])",
             "print(model.similarity(queries, documents))", "```", ""]
    for kind, prompt in prompts.items():
        if prompt:
            exact = summary["prompt_layouts"][kind]
            lines.append(f"The {kind} prompt `{prompt}` is prepended by `encode_{kind}` and left out of the pooling"
                         + ("." if exact else "; sentence-transformers tokenises it together with the text, so "
                            "its embeddings differ slightly from bg2vec's `encode(instruction=...)`."))
    dims = summary["matryoshka_dims"]
    if dims:
        lines += ["", f"Matryoshka: the leading {' / '.join(map(str, dims))} of the {summary['dimension']} dimensions "
                  "were trained to work on their own (smaller indexes, faster search, a little less quality). "
                  "sentence-transformers cuts the embeddings with `truncate_dim` (`model.similarity` is cosine; "
                  "pass `normalize_embeddings=True` to `encode` for unit vectors):", "", "```python",
                  f"model = SentenceTransformer(\"{where}\", truncate_dim={dims[-1]})", "```"]
    lines += ["", "With bg2vec (the same embeddings):", "", "```python", "from bg2vec import Bg2Vec", "",
              f"model = Bg2Vec.from_pretrained(\"{where}\", pooling=\"{summary['pooling']}\")",
              "embeddings = model.encode([\"София е столицата на България.\"])",
              *([f"queries = model.encode([\"Коя е столицата на България?\"], instruction={prompts['query']!r})"]
                if prompts["query"] else []), "```"]
    return lines
