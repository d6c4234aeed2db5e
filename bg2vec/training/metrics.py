"""Where rank 0's metrics go: the console, TensorBoard files in the run directory, optionally MLflow."""

from __future__ import annotations

import struct
from pathlib import Path

from bg2vec.console.library_logs import worker_print
from bg2vec.errors import Bg2VecError


class MetricsSink:
    def __init__(self, stage: str, max_steps: int, tensorboard_dir: str | None, mlflow_uri: str | None,
                 run_name: str, params: dict):
        """``params``: the run's settings, nested as in the config; MLflow gets them as dotted keys."""
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
            mlflow.log_params({k: v for k, v in _flat(params).items() if isinstance(v, int | float | str | bool)})
            self.mlflow = mlflow

    def write(self, step: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        worker_print(f"[{self.stage}] step {step}/{self.max_steps} {shown}")
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


def read_scalars(tensorboard_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files in a local directory: {tag: [(step, value), ...]}.

    Event files are TFRecords (u64 length, u32 CRC, an ``Event`` protobuf, u32 CRC), read here with
    tensorboardX's own protobuf classes so that neither TensorFlow nor tensorboard is needed."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(tensorboard_dir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
