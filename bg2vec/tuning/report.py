"""What a Ray Tune search leaves behind: best.json, trials.md and trials.png (see bg2vec.tuning.search)."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Literal

from bg2vec.errors import Bg2VecError
from bg2vec.storage import child, redact, resolve, write_bytes_atomic
from bg2vec.training.output import output_state

METRIC = "dev_score"
TIME_ATTR = "trial_step"
LABELS = {"mntp": "MNTP", "simcse": "SimCSE", "contrastive": "contrastive"}
# what dev_score measures, by the stage a trial ends with (bg2vec.training.dev_score)
OBJECTIVES = {"simcse": "continuation retrieval MRR on held-out validation blocks",
              "contrastive": "MRR of the validation queries finding their positives"}


@dataclass
class TrialRecord:
    """One trial as the report shows it."""

    trial_id: str
    params: dict[str, float]
    history: list[tuple[int, float]]
    """(trial_step, dev_score) of every validation pass."""
    status: Literal["completed", "stopped", "error"]
    model: str | None = None
    """The finished encoder (the output of the trial's last stage), when the trial completed."""
    checkpoint: str | None = None
    """The last Ray Train checkpoint the trial reported."""
    error: str | None = None

    @property
    def score(self) -> float | None:
        return self.history[-1][1] if self.history else None

    @property
    def steps(self) -> int:
        return self.history[-1][0] if self.history else 0


def trial_records(grid, output: str, last_stage: str = "simcse") -> list[TrialRecord]:
    """The trials of a finished Tune run (a ResultGrid) whose trials end with ``last_stage``."""
    from bg2vec.errors import find_user_error

    records = []
    for result in grid:
        frame = result.metrics_dataframe
        history = []
        if frame is not None and METRIC in frame and TIME_ATTR in frame:
            history = [(int(s), float(v)) for s, v in zip(frame[TIME_ATTR], frame[METRIC]) if not math.isnan(v)]
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1]
        model = child(output, "trials", trial_id, last_stage)
        if result.error is not None:
            status, model = "error", None
        elif output_state(model) == "complete":
            status = "completed"
        else:
            status, model = "stopped", None
        error = None if result.error is None else str(find_user_error(result.error) or result.error).splitlines()[0]
        records.append(TrialRecord(trial_id, dict(result.config), history, status, model,
                                   (result.metrics or {}).get("checkpoint_path"), error))
    return sorted(records, key=lambda r: r.trial_id)


def write_report(output: str, records: list[TrialRecord], stage_steps: dict[str, int], searcher: str) -> dict:
    """trials.md and trials.png, then best.json (written last: its presence means the search finished
    with at least one complete trial). ``stage_steps``: each stage of a trial and its steps, in order.
    Returns best.json's content."""
    _write(output, "trials.md", trials_table(records, stage_steps, searcher).encode())
    _write(output, "trials.png", trials_plot(records, stage_steps))
    finished = [r for r in records if r.status == "completed" and r.score is not None]
    if not finished:
        errors = "; ".join(dict.fromkeys(r.error for r in records if r.error))  # each message once
        raise Bg2VecError(f"no trial of the search finished (see {redact(child(output, 'trials.md'))})"
                          + (f"; errors: {errors}" if errors else ""))
    top = max(finished, key=lambda r: r.score)
    earlier = {f"{stage}_model": child(output, "trials", top.trial_id, stage) for stage in list(stage_steps)[:-1]}
    best = {"trial_id": top.trial_id, METRIC: top.score, "config": top.params, "model": top.model, **earlier,
            "checkpoint": top.checkpoint, "trials": len(records), "searcher": searcher}
    _write(output, "best.json", json.dumps(best, indent=2).encode())
    return best


def trials_table(records: list[TrialRecord], stage_steps: dict[str, int], searcher: str) -> str:
    names = sorted({k for r in records for k in r.params})
    total_steps = sum(stage_steps.values())
    lines = [f"# Hyperparameter search: {len(records)} trials ({searcher} search, ASHA)", "",
             f"Objective: {METRIC} ({OBJECTIVES[list(stage_steps)[-1]]}, higher is better), after each validation "
             f"pass; a trial runs {total_steps} steps ({' then '.join(LABELS[s] for s in stage_steps)}).", "",
             "| trial | " + " | ".join(names) + f" | {METRIC} | steps | status |",
             "| --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: | --- |"]
    ranked = sorted(records, key=lambda r: -math.inf if r.score is None else r.score, reverse=True)
    for r in ranked:
        values = " | ".join(f"{r.params[n]:.4g}" if isinstance(r.params.get(n), float) else str(r.params.get(n, ""))
                            for n in names)
        score = "" if r.score is None else f"{r.score:.4f}"
        status = {"completed": "completed", "stopped": "stopped early (ASHA)",
                  "error": f"error: {r.error}"}[r.status]
        lines.append(f"| {r.trial_id} | {values} | {score} | {r.steps}/{total_steps} | {status} |")
    return "\n".join(lines) + "\n"


def trials_plot(records: list[TrialRecord], stage_steps: dict[str, int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for r in records:
        if r.history:
            steps, scores = zip(*r.history)
            label = f"{r.trial_id} " + ", ".join(f"{k}={v:.3g}" for k, v in sorted(r.params.items()))
            axes.plot(steps, scores, marker="o", linestyle="-" if r.status == "completed" else "--", label=label)
    start = 0
    for stage, steps in stage_steps.items():
        if start:  # where a later stage begins
            axes.axvline(start, color="grey", linewidth=0.8)
            axes.text(start, axes.get_ylim()[1], f" {LABELS[stage]} →", va="top", color="grey")
        start += steps
    axes.set(xlabel=f"trial step ({', then '.join(LABELS[s] for s in stage_steps)})", ylabel=METRIC, xlim=(0, start),
             title="dev_score of every trial (dashed: stopped early or failed)")
    if axes.lines:
        axes.legend(fontsize=7, loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _write(output: str, name: str, data: bytes) -> None:
    fs, path = resolve(child(output, name))
    write_bytes_atomic(fs, path, data)
