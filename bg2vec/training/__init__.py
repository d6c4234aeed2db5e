"""Training stages on Ray Train + DeepSpeed: configs (config.py), the worker loop (loop.py), the
driver (launch.py), and what they build on (model.py, data.py, adapters.py, output.py, metrics.py)."""
