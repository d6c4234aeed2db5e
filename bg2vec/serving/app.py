"""The Ray Serve application: a FastAPI ingress deployment whose replicas each hold one encoder.

Routes (under the config's route_prefix): ``POST /v1/embeddings`` and ``GET /v1/models[/{id}]`` (OpenAI's),
``GET /health`` (no key needed) and ``GET /stats`` (this replica's batch sizes, its peak memory); no others (FastAPI's
/docs, /redoc and /openapi.json are off). A request's inputs join one queue per replica (``serve.batch``),
so the inputs of concurrent requests share forward passes.

One request cannot take a replica down or stall it: its body is refused past ``max_request_bytes`` before
it is read, an input past ``max_input_chars`` before anything is tokenised, and the JSON parsing and
tokenising (of inputs cut to about ``max_input_tokens``, bg2vec.serving.inputs) run in a worker thread,
off the event loop that answers the other requests.

    serve run bg2vec.serving.app:build model=runs/demo/simcse      # any ServeConfig key=value; config=FILE too
"""

# no `from __future__ import annotations`: FastAPI reads the route methods' annotations (Request) at runtime,
# from the globals of Serve's wrapper, where the names of this module are not found
import asyncio
import dataclasses
import hashlib
import hmac
import json
import resource
import time
from collections import Counter

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException

from bg2vec.serving.config import ALIAS, ServeConfig
from bg2vec.serving.inputs import FittedInputs, fit_inputs
from bg2vec.serving.openai_schema import (
    EmbeddingRequest,
    OpenAIError,
    embedding_response,
    model_card,
    parse_embedding_request,
    truncate_dimensions,
)

DEPLOYMENT = "Bg2VecEmbeddings"
ROUTES = "POST /v1/embeddings, GET /v1/models, GET /health, GET /stats"

api = FastAPI(title="bg2vec embeddings", description="OpenAI-compatible embeddings of a bg2vec encoder",
              docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(OpenAIError)
async def _openai_error(request: Request, error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Unknown routes and methods answer in OpenAI's error shape too."""
    message = f"{request.method} {request.url.path}: {error.detail}; this server offers {ROUTES}"
    return JSONResponse(OpenAIError(error.status_code, message).body(), status_code=error.status_code)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) once it is over ``limit`` bytes: by its Content-Length before any
    of it is read, else as it arrives."""
    too_large = OpenAIError(413, f"the request body is larger than this server's limit of {limit:,} bytes "
                                 f"(max_request_bytes); send fewer or shorter inputs per request",
                            code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def key_digest(key: str) -> str:
    """Replicas keep the key's SHA-256, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


class BatchStats:
    """What one replica has done: requests, inputs and forward passes, by batch size."""

    def __init__(self) -> None:
        self.requests = self.inputs = self.batches = 0
        self.batch_sizes: Counter[int] = Counter()
        self.requests_per_batch: Counter[int] = Counter()

    def record_batch(self, request_numbers: list[int]) -> None:
        self.batches += 1
        self.inputs += len(request_numbers)
        self.batch_sizes[len(request_numbers)] += 1
        self.requests_per_batch[len(set(request_numbers))] += 1

    def as_dict(self) -> dict:
        return {"requests": self.requests, "inputs": self.inputs, "batches": self.batches,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "requests_per_batch": {str(k): v for k, v in sorted(self.requests_per_batch.items())}}


@serve.deployment(name=DEPLOYMENT)
@serve.ingress(api)
class EmbeddingServer:
    def __init__(self, cfg: ServeConfig, model: str, key_sha256: str | None, created: int):
        import torch

        from bg2vec import Bg2Vec
        from bg2vec.console import quiet_worker
        from bg2vec.storage import localize

        quiet_worker()
        cuda = torch.cuda.is_available()  # Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU(s)
        dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bfloat16": torch.bfloat16,
                 "float32": torch.float32}[cfg.dtype]
        self.encoder = Bg2Vec.from_pretrained(localize(model), dtype=dtype, device="cuda" if cuda else "cpu",
                                              max_length=cfg.max_input_tokens)
        self.cfg, self.key_sha256, self.created = cfg, key_sha256, created
        self.models = (cfg.name,) if cfg.name == ALIAS else (cfg.name, ALIAS)
        self.stats = BatchStats()
        # serve.batch's settings are fixed where it decorates; the config's replace them per replica
        self._encode_batch.set_max_batch_size(cfg.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> JSONResponse:
        self._authorize(request)
        body = await read_body(request, self.cfg.max_request_bytes)
        req, fitted = await asyncio.to_thread(self._parse, body)  # the event loop serves others meanwhile
        self.stats.requests += 1
        number = self.stats.requests
        vectors = np.stack(await asyncio.gather(*(self._encode_batch((number, text)) for text in fitted.texts)))
        if req.dimensions is not None:
            vectors = truncate_dimensions(vectors, req.dimensions)
        tokens = sum(min(n, self.encoder.config.max_length) for n in fitted.counts)
        return JSONResponse(embedding_response(vectors, req.encoding_format, self.cfg.name, tokens))

    def _parse(self, body: bytes) -> tuple[EmbeddingRequest, FittedInputs]:
        """The checked request and its inputs cut to what the encoder reads, with their token counts."""
        try:
            decoded = json.loads(body)
        except RecursionError:
            raise OpenAIError(400, "the request body is JSON nested too deeply; send a flat JSON object") from None
        except ValueError as e:  # not JSON, not UTF-8, a number of thousands of digits
            raise OpenAIError(400, f"the request body is not valid JSON: {e}") from None
        req = parse_embedding_request(decoded, models=self.models, max_inputs=self.cfg.max_inputs_per_request,
                                      max_chars=self.cfg.max_input_chars, dimension=self.encoder.dimension)
        limit = self.encoder.config.max_length
        fitted = fit_inputs(self.encoder.token_counts, req.inputs, limit)
        over = [i for i, n in enumerate(fitted.counts) if n > limit]
        if over and self.cfg.overlong_policy == "error":
            i = over[0]
            raise OpenAIError(400, f"input[{i}] takes {'more than ' if fitted.cut[i] else ''}{fitted.counts[i]} "
                                   f"tokens, more than this server's limit of {limit} (max_input_tokens; "
                                   f"overlong_policy=error): shorten it or split it",
                              param="input", code="context_length_exceeded")
        return req, fitted

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, items: list[tuple[int, str]]) -> list[np.ndarray]:
        """(request number, text) of every queued input -> their vectors, in one forward pass per batch."""
        texts = [text for _, text in items]
        # a worker thread keeps the event loop free to queue the next batch's inputs meanwhile
        vectors = await asyncio.to_thread(self.encoder.encode, texts, batch_size=len(texts))
        self.stats.record_batch([number for number, _ in items])
        return list(vectors)

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [model_card(self.cfg.name, self.created)]}

    @api.get("/v1/models/{model_id}")
    async def retrieve_model(self, model_id: str, request: Request) -> dict:
        self._authorize(request)
        if model_id not in self.models:
            raise OpenAIError(404, f"the model {model_id!r} does not exist on this server; it serves {self.cfg.name}",
                              param="model", code="model_not_found")
        return model_card(model_id, self.created)

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "model": self.cfg.name}

    @api.get("/stats")
    async def batch_stats(self, request: Request) -> dict:
        self._authorize(request)
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "max_batch_size": self.cfg.max_batch_size, **self.stats.as_dict(),
                "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB

    def _authorize(self, request: Request) -> None:
        if self.key_sha256 is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise OpenAIError(401, "this server needs an API key: send the header Authorization: Bearer KEY",
                              code="invalid_api_key")
        if not hmac.compare_digest(key_digest(key.strip()), self.key_sha256):
            raise OpenAIError(401, "incorrect API key provided", code="invalid_api_key")


def application(cfg: ServeConfig, model: str, gpus_per_replica: float):
    """The bound application for ``cfg``, with the model at ``model`` (as every replica reads it)."""
    key = cfg.resolve_api_key()
    scaling = ({"autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                       "target_ongoing_requests": cfg.target_ongoing_requests}}
               if cfg.autoscaling else {"num_replicas": cfg.num_replicas})
    deployment = EmbeddingServer.options(
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": gpus_per_replica}, **scaling)
    # replicas (and Serve's stored application) get the key's digest, the config without the key
    return deployment.bind(dataclasses.replace(cfg, api_key=None), model, key_digest(key) if key else None,
                           int(time.time()))


def build(args: dict[str, str]):
    """The builder of ``serve run bg2vec.serving.app:build model=DIR [config=FILE] [key=value ...]``.

    Serve's own settings decide where it listens there (127.0.0.1:8000 unless a Serve config file says
    otherwise; ``--route-prefix``, ``--name``); host, port and route_prefix are jobs/serve.py's."""
    from bg2vec.config import load_config
    from bg2vec.serving.prepare import prepare

    args = dict(args)
    cfg = load_config(ServeConfig, args.pop("config", None), [f"{k}={v}" for k, v in args.items()])
    return application(cfg, *prepare(cfg))
