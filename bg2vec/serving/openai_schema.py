"""OpenAI's embeddings API, the parts a text encoder serves: request checks, response and error bodies.

Requests are checked by hand (not by a pydantic model) so that every refusal is one OpenAI-shaped error,
``{"error": {"message", "type", "param", "code"}}``, whose message says what was wrong and what is allowed.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

KNOWN_FIELDS = ("input", "model", "encoding_format", "dimensions", "user")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud800" escapes decode to these; they are not text


class OpenAIError(Exception):
    """A refused request: its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class EmbeddingRequest:
    inputs: list[str]
    model: str
    encoding_format: Literal["float", "base64"]
    dimensions: int | None


def parse_embedding_request(body: Any, *, models: tuple[str, ...], max_inputs: int, max_chars: int,
                            dimension: int) -> EmbeddingRequest:
    """Check a decoded JSON body against what this server offers; raises :class:`OpenAIError`."""
    if not isinstance(body, dict):
        raise OpenAIError(400, f"the request body must be a JSON object, not {_json_type(body)}")
    unknown = [key for key in body if key not in KNOWN_FIELDS]
    if unknown:
        raise OpenAIError(400, f"unrecognized request argument supplied: {unknown[0]} (known: "
                               f"{', '.join(KNOWN_FIELDS)})", param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str):
        raise OpenAIError(400, f"model is required, a string naming the model (this server: {' or '.join(models)})",
                          param="model")
    if model not in models:
        also = f" (also as {', '.join(models[1:])})" if len(models) > 1 else ""
        raise OpenAIError(404, f"the model {model!r} does not exist on this server; it serves {models[0]}{also}",
                          param="model", code="model_not_found")
    inputs = _inputs(body.get("input"), max_inputs, max_chars)
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    elif encoding_format not in ("float", "base64"):
        raise OpenAIError(400, f"encoding_format must be 'float' or 'base64', got {encoding_format!r}",
                          param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or not 1 <= dimensions <= dimension):
        raise OpenAIError(400, f"dimensions must be an integer from 1 to {dimension} (the model's dimension), "
                               f"got {dimensions!r}", param="dimensions")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise OpenAIError(400, f"user must be a string, not {_json_type(body['user'])}", param="user")
    return EmbeddingRequest(inputs, model, encoding_format, dimensions)


def _inputs(value: Any, max_inputs: int, max_chars: int) -> list[str]:
    if value is None:
        raise OpenAIError(400, "input is required: a string or a list of strings", param="input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list):
        raise OpenAIError(400, f"input must be a string or a list of strings, not {_json_type(value)}",
                          param="input")
    if not inputs:
        raise OpenAIError(400, "input must not be an empty list", param="input")
    if len(inputs) > max_inputs:
        raise OpenAIError(400, f"input has {len(inputs)} items, more than this server's limit of {max_inputs} "
                               f"per request (max_inputs_per_request); split it into several requests",
                          param="input")
    for i, item in enumerate(inputs):
        if _is_int(item) or (isinstance(item, list) and item and all(_is_int(t) for t in item)):
            raise OpenAIError(400, "token arrays are not supported: send the text (this server tokenises with "
                                   "its own encoder's tokenizer)", param="input")
        if not isinstance(item, str):
            raise OpenAIError(400, f"input[{i}] must be a string, not {_json_type(item)}", param="input")
        if not item:
            raise OpenAIError(400, f"input[{i}] is an empty string; every input needs text", param="input")
        if len(item) > max_chars:
            raise OpenAIError(400, f"input[{i}] has {len(item):,} characters, more than this server's limit of "
                                   f"{max_chars:,} (max_input_chars); shorten it or split it", param="input",
                              code="string_above_max_length")
        surrogate = LONE_SURROGATE.search(item)
        if surrogate:
            raise OpenAIError(400, f"input[{i}] holds a lone UTF-16 surrogate (U+{ord(surrogate.group()):04X}) at "
                                   f"character {surrogate.start()}, which is not text; send valid Unicode (a JSON "
                                   f"\\u escape of a surrogate must be one of a pair)", param="input")
    return inputs


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def truncate_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` components of each vector, L2-normalised again (OpenAI's ``dimensions``)."""
    head = vectors[:, :dimensions]
    return head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def embedding_response(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> dict:
    """OpenAI's response body; base64 is the little-endian float32 bytes of each vector, as OpenAI sends."""
    vectors = vectors.astype("<f4", copy=False)
    if encoding_format == "base64":
        encoded = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    else:
        encoded = vectors.tolist()
    return {"object": "list", "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]}


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "bg2vec"}
