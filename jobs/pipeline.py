"""Every stage end to end with one preset: prepare -> MNTP -> SimCSE -> pairs -> contrastive -> evaluate -> embed
(the README demo).

    # the embedded default: the sample dump, a tiny Mistral, 2 CPU workers, then the report
    python jobs/pipeline.py --preset tiny output=runs/tiny

    # a stage's setting for this run: prefix it with the stage name
    python jobs/pipeline.py --preset tiny output=runs/tiny mntp.max_steps=20 evaluate.batch_size=64

    # BgGPT-7B on a cluster (each stage as its own job is often handier: see README)
    ray job submit --working-dir . -- python jobs/pipeline.py --preset bggpt-7b output=s3://my-bucket/bg2vec

    # Ray's, DeepSpeed's and transformers' own logs on the console too (they are always in Ray's log folder)
    python jobs/pipeline.py --preset tiny output=runs/tiny --verbose

Writes OUTPUT/data, OUTPUT/mntp, OUTPUT/simcse, OUTPUT/pairs (pairs mined from the prepared pages, with
hard negatives from the encoder the contrastive stage starts from), OUTPUT/contrastive (the finished
encoder), OUTPUT/eval and OUTPUT/embeddings (the prepared pages, embedded). A stage whose output is
already complete is skipped, so running the command again continues where it stopped (overwrite=true
redoes everything); the training stages resume from their checkpoints and the embedding from its
finished shards.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from bg2vec.config import load_config
from bg2vec.console import VERBOSE_ENV, setup_console
from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.pipeline_layout import LAST_WRITTEN, OUTPUTS, STAGES
from bg2vec.storage import child

REPO = Path(__file__).resolve().parents[1]


@dataclass
class PipelineSettings:
    """The pipeline's own settings (every other key=value is STAGE.key=value)."""

    output: str
    """Where every stage's output goes (data/, mntp/, simcse/, pairs/, contrastive/, eval/, embeddings/)."""
    overwrite: bool = False
    """Redo every stage, replacing complete outputs (read as any config's boolean: true/false, yes/no, on/off)."""


def stage_configs(preset: str, output: str, overrides: list[str]) -> dict:
    """Each stage's typed config from configs/<preset>/<stage>.yaml, wired to the others' outputs."""
    import yaml

    from bg2vec.data.config import PrepareConfig
    from bg2vec.embedding.config import EmbedConfig
    from bg2vec.evaluation.config import EvaluateConfig
    from bg2vec.evaluation.models import ModelSpec
    from bg2vec.pairs.config import PairsConfig
    from bg2vec.training.config import ContrastiveConfig, MNTPConfig, SimCSEConfig

    classes = {"prepare": PrepareConfig, "mntp": MNTPConfig, "simcse": SimCSEConfig, "pairs": PairsConfig,
               "contrastive": ContrastiveConfig, "evaluate": EvaluateConfig, "embed": EmbedConfig}
    folder = REPO / "configs" / preset
    if not folder.is_dir():
        presets = sorted(p.name for p in (REPO / "configs").iterdir() if (p / "mntp.yaml").is_file())
        raise ConfigError(f"--preset {preset}: no folder configs/{preset}; presets: {', '.join(presets)}")
    paths = {s: child(output, OUTPUTS[s]) for s in STAGES}
    # the contrastive stage starts from MNTP (LLM2Vec's choice) unless the preset names simcse; its pairs'
    # hard negatives are mined by that same encoder
    preset_contrastive = yaml.safe_load((folder / "contrastive.yaml").read_text(encoding="utf-8")) or {}
    start = "simcse" if preset_contrastive.get("simcse") else "mntp"
    final = paths["contrastive"]
    wiring = {"prepare": [f"output={paths['prepare']}"],
              "mntp": [f"data={paths['prepare']}", f"output={paths['mntp']}"],
              "simcse": [f"data={paths['prepare']}", f"mntp={paths['mntp']}", f"output={paths['simcse']}"],
              "pairs": [f"data={paths['prepare']}", f"model={paths[start]}", f"output={paths['pairs']}"],
              "contrastive": [f"pairs={paths['pairs']}", f"{start}={paths[start]}", f"output={final}"],
              "evaluate": [f"model={final}", f"data={paths['prepare']}", f"output={paths['evaluate']}"],
              "embed": [f"model={final}", f"input={paths['prepare']}", f"output={paths['embed']}"]}
    per_stage: dict[str, list[str]] = {s: [] for s in STAGES}
    for item in overrides:
        stage, _, rest = item.partition(".")
        if stage not in per_stage or not rest:
            raise ConfigError(f"override {item!r}: prefix it with a stage ({', '.join(STAGES)}), "
                              f"e.g. mntp.max_steps=20")
        per_stage[stage].append(rest)
    configs = {s: load_config(classes[s], str(folder / f"{s}.yaml"), wiring[s] + per_stage[s]) for s in STAGES}
    if start == "mntp":  # SimCSE is not among the final encoder's stages: its own row in the report
        configs["evaluate"].models.insert(0, ModelSpec("MNTP + SimCSE", paths["simcse"]))
    return configs


def complete(stage: str, cfg) -> bool:
    """Whether the stage's output holds the file it writes last."""
    from bg2vec.training.output import output_state

    return output_state(cfg.output, LAST_WRITTEN[stage]) == "complete"


def run(preset: str, output: str, overwrite: bool, overrides: list[str]) -> str:
    from bg2vec.data.pipeline import describe_prepared, prepare
    from bg2vec.embedding.pipeline import embed
    from bg2vec.evaluation.runner import evaluate
    from bg2vec.evaluation.tasks import task_files
    from bg2vec.pairs.pipeline import describe_pairs, mine_pairs
    from bg2vec.training.launch import run_stage
    from bg2vec.training.summary import summarize

    configs = stage_configs(preset, output, overrides)
    evaluation = configs["evaluate"]
    if overwrite or not complete("evaluate", evaluation):  # its files are there (or downloaded) before training
        for spec in evaluation.tasks:
            task_files(spec, evaluation.sources())
    table = ""
    for stage in STAGES:
        cfg = configs[stage]
        if not overwrite and complete(stage, cfg):
            print(f"[pipeline] {stage}: {cfg.output} is complete, skipped", flush=True)
            if stage == "evaluate":
                table = Path(cfg.output, "report.md").read_text() if "://" not in cfg.output else ""
            continue
        if stage != "embed":  # partial outputs of an earlier attempt: the stage replaces or resumes them
            cfg.overwrite = True  # (the embedding resumes from its finished shards by itself)
        print(f"[pipeline] {stage} -> {cfg.output}", flush=True)
        if stage == "prepare":
            print(describe_prepared(cfg.output, prepare(cfg)), flush=True)
        elif stage == "pairs":
            print(describe_pairs(cfg.output, mine_pairs(cfg)), flush=True)
        elif stage == "evaluate":
            table = evaluate(cfg)["table"]
        elif stage == "embed":
            embedded = embed(cfg)
            print(f"[pipeline] embed: {embedded['passages']} passages, dimension {embedded['dimension']}, "
                  f"{embedded['this_run']['passages_per_s']:.1f} passages/s", flush=True)
        else:
            print(summarize(run_stage(cfg)), flush=True)
    report, embeddings = child(output, OUTPUTS["evaluate"]), child(output, OUTPUTS["embed"])
    search = (f"\nsearch them: python jobs/search.py index={embeddings} \"your query\""
              if configs["embed"].index.precisions else "")
    return (f"{table}\n\nreport: {report}/report.md, chart: {report}/report.png\n"
            f"vectors: {embeddings}/vectors/*.parquet{search}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="a folder under configs/ (tiny, bggpt-7b, ...)")
    parser.add_argument("settings", nargs="*", metavar="key=value",
                        help="output=DIR (required), overwrite=true, and STAGE.key=value for a stage")
    parser.add_argument("--verbose", action="store_true",
                        help=f"also print Ray's, DeepSpeed's and transformers' own logs (as {VERBOSE_ENV}=1 does)")
    args = parser.parse_args()
    setup_console(args.verbose)
    top = dict(s.split("=", 1) for s in args.settings if "=" in s and s.split("=", 1)[0] in ("output", "overwrite"))
    rest = [s for s in args.settings if s.split("=", 1)[0] not in ("output", "overwrite")]
    try:
        if "output" not in top:
            raise ConfigError("output=DIR is required (where data/, mntp/, simcse/, pairs/, contrastive/, eval/ and "
                              "embeddings/ go)")
        settings = load_config(PipelineSettings, None, [f"{k}={v}" for k, v in top.items()])
        print(run(args.preset, settings.output, settings.overwrite, rest))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Bg2VecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
