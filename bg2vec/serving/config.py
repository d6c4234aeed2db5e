"""Configuration of ``jobs/serve.py`` (and of ``serve run bg2vec.serving.app:build``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from bg2vec.errors import ConfigError

ALIAS = "bg2vec"
"""The model name every server accepts besides its own (clients configured once for any bg2vec server)."""


@dataclass
class ServeConfig:
    """Serve an encoder over HTTP with OpenAI's embeddings API (POST /v1/embeddings), on Ray Serve."""

    model: str
    """The encoder: a trained bg2vec directory (or a base LLM, hub id or folder). Local path or URI
    (s3://, gs://), read by every replica."""
    served_name: str | None = None
    """The model name clients send and responses carry; empty: the model folder's name. "bg2vec" is
    accepted too."""
    host: str = "127.0.0.1"
    """Interface Serve's HTTP proxy listens on; 0.0.0.0 for every interface (then set an API key)."""
    port: int = 8000
    """Port of Serve's HTTP proxy."""
    route_prefix: str = "/"
    """Path the API is mounted under: POST /v1/embeddings at "/", POST /PREFIX/v1/embeddings otherwise
    (several applications on one Serve)."""
    max_batch_size: int = 32
    """Most inputs per forward pass: the inputs of concurrent requests are batched together
    (serve.batch) up to this many."""
    batch_wait_timeout_s: float = 0.01
    """Longest the first input of a batch waits for more before the batch runs."""
    max_ongoing_requests: int = 64
    """Most requests a replica holds at once (those waiting in its batch queue included); more wait at
    the proxy. Batches combine inputs of at most this many requests."""
    max_inputs_per_request: int = 2048
    """Most inputs in one request (OpenAI's own limit is 2048); more is a 400 error."""
    max_request_bytes: int = 16 << 20
    """Largest request body in bytes (16 MiB); a larger one is refused (413) before it is read."""
    max_input_chars: int = 100_000
    """Longest input in characters; a longer one is refused (400) before anything is tokenised. Inputs
    below it are cut to about max_input_tokens before tokenising, so a long input costs little."""
    max_input_tokens: int | None = None
    """Longest input in tokens, special tokens included; empty: the encoder's max_length."""
    overlong_policy: Literal["truncate", "error"] = "truncate"
    """An input over max_input_tokens is truncated to it (as Bg2Vec.encode does) or refused with a 400
    error that names it."""
    api_key: str | None = None
    """Key clients must send (Authorization: Bearer KEY); empty: no key. Prefer api_key_env, which keeps
    the key out of files and process lists."""
    api_key_env: str | None = None
    """Environment variable holding the key (read where the job starts); empty: api_key decides."""
    num_replicas: int = 1
    """Replicas (each loads the model) when autoscaling is off."""
    autoscaling: bool = False
    """Let Serve add and remove replicas between min_replicas and max_replicas with the load."""
    min_replicas: int = 1
    """Fewest replicas when autoscaling (0: none while idle; the first request then waits for one)."""
    max_replicas: int = 4
    """Most replicas when autoscaling."""
    target_ongoing_requests: float = 32
    """Requests in flight per replica that autoscaling aims at."""
    gpus_per_replica: float | None = None
    """GPUs per replica; empty: 1 when the cluster has GPUs, else 0 (CPU)."""
    cpus_per_replica: float = 1
    """CPUs reserved per replica; on CPU also its torch threads (Ray sets OMP_NUM_THREADS from it): on a small
    machine leave a core to Serve's proxy, whose work spinning threads slow down."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Weights and compute: auto is bfloat16 on GPU, float32 on CPU."""
    ray_address: str | None = None
    """Ray cluster to join; empty: RAY_ADDRESS (as set by ray job submit), else a local Ray."""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in [1, 65535], got {self.port}")
        if not self.route_prefix.startswith("/") or (self.route_prefix != "/" and self.route_prefix.endswith("/")):
            raise ConfigError(f"route_prefix must start with '/' and not end with one (e.g. /bg2vec), "
                              f"got {self.route_prefix!r}")
        for key in ("max_batch_size", "max_ongoing_requests", "max_inputs_per_request", "num_replicas",
                    "max_request_bytes", "max_input_chars"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.max_input_tokens is not None and self.max_input_tokens < 2:
            raise ConfigError(f"max_input_tokens must be >= 2 (room for a token and BOS), got {self.max_input_tokens}")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigError(f"min_replicas and max_replicas must satisfy 0 <= min_replicas <= max_replicas, "
                              f"max_replicas >= 1; got {self.min_replicas} and {self.max_replicas}")
        if self.target_ongoing_requests <= 0:
            raise ConfigError(f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests}")
        if self.cpus_per_replica < 0 or (self.gpus_per_replica is not None and self.gpus_per_replica < 0):
            raise ConfigError(f"cpus_per_replica and gpus_per_replica must be >= 0, got {self.cpus_per_replica} "
                              f"and {self.gpus_per_replica}")
        if self.api_key is not None and self.api_key_env is not None:
            raise ConfigError("set api_key or api_key_env, not both")
        if self.served_name is not None and not self.served_name.strip():
            raise ConfigError("served_name must not be blank; leave it empty for the model folder's name")

    @property
    def name(self) -> str:
        """The served model name (and the Serve application's)."""
        if self.served_name is not None:
            return self.served_name
        return self.model.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or self.model

    @property
    def path_prefix(self) -> str:
        """What the routes' paths start with: route_prefix, or nothing at the root."""
        return "" if self.route_prefix == "/" else self.route_prefix

    def resolve_api_key(self) -> str | None:
        """The key clients must send, from api_key or the environment variable api_key_env names."""
        if self.api_key_env is None:
            return self.api_key or None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ConfigError(f"api_key_env={self.api_key_env}: the environment variable {self.api_key_env} is not "
                              f"set (or empty); export it with the key clients must send, or unset api_key_env")
        return key
