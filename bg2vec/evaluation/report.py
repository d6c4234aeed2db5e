"""The evaluation report: results.json, tasks.json (each task's type and main metric), report.md
(models x tasks) and report.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def main_scores(results: dict[str, dict[str, dict]], main: dict[str, str]) -> dict[str, dict[str, float]]:
    """{model: {task: main score}} from the full results and each task's main metric."""
    return {model: {task: scores[main[task]] for task, scores in tasks.items()} for model, tasks in results.items()}


def markdown_table(results: dict[str, dict[str, dict]], main: dict[str, str]) -> str:
    """Models as rows, tasks as columns (main score x 100), and the mean over tasks."""
    table = main_scores(results, main)
    tasks = list(main)
    header = ["model", *(f"{t} ({main[t]})" for t in tasks), "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, scores in table.items():
        values = [100 * scores[t] for t in tasks]
        lines.append("| " + " | ".join([model, *(f"{v:.2f}" for v in values), f"{np.mean(values):.2f}"]) + " |")
    return "\n".join(lines)


def write_report(directory: Path, results: dict[str, dict[str, dict]], main: dict[str, str], types: dict[str, str],
                 notes: str) -> str:
    """Write the four files into ``directory``; returns the markdown table."""
    table = markdown_table(results, main)
    (directory / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (directory / "tasks.json").write_text(json.dumps(
        {task: {"type": types[task], "main_score": metric} for task, metric in main.items()}, indent=2))
    (directory / "report.md").write_text(f"# bg2vec evaluation\n\nMain score of each task x 100.\n\n{table}\n\n"
                                         f"{notes}\n")
    _plot(directory / "report.png", main_scores(results, main), list(main))
    return table


def _plot(path: Path, table: dict[str, dict[str, float]], tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    models = list(table)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks) + 2), 4.5))
    x = np.arange(len(tasks))
    for i, model in enumerate(models):
        ax.bar(x + i * width - 0.4 + width / 2, [100 * table[model][t] for t in tasks], width, label=model)
    ax.set_xticks(x, tasks, rotation=15, ha="right")
    ax.set_ylabel("main score x 100")
    ax.set_title("bg2vec evaluation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
