"""Where rank 0's metrics go: the console, TensorBoard files in the run directory, optionally MLflow."""

from __future__ import annotations

import logging

from bg2vec.errors import Bg2VecError

log = logging.getLogger("bg2vec.train")


class MetricsSink:
    def __init__(self, stage: str, max_steps: int, tensorboard_dir: str | None, mlflow_uri: str | None,
                 run_name: str, params: dict):
        self.stage, self.max_steps = stage, max_steps
        self.writer = None
        if tensorboard_dir:
            from tensorboardX import SummaryWriter  # writes local paths and s3:// URIs

            self.writer = SummaryWriter(tensorboard_dir)
        self.mlflow = None
        if mlflow_uri:
            try:
                import mlflow
            except ImportError:
                raise Bg2VecError("run.mlflow_tracking_uri is set but mlflow is not installed: "
                                  "pip install mlflow") from None
            mlflow.set_tracking_uri(mlflow_uri)
            mlflow.set_experiment("bg2vec")
            mlflow.start_run(run_name=f"{run_name}")
            mlflow.log_params({k: v for k, v in params.items() if isinstance(v, int | float | str | bool)})
            self.mlflow = mlflow

    def write(self, step: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        print(f"[{self.stage}] step {step}/{self.max_steps} {shown}", flush=True)
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"{self.stage}/{key}", value, step)
            self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"
