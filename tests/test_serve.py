"""The embeddings server (jobs/serve.py, bg2vec.serving): OpenAI's client gets exactly Bg2Vec.encode's vectors,
concurrent requests share batches, bad and hostile requests are OpenAI-shaped 4xx errors that leave the replica
serving, a large request does not stall the others, and the job starts and stops cleanly."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.config import load_config
from bg2vec.errors import ConfigError
from bg2vec.ray_session import free_port
from bg2vec.serving.app import application
from bg2vec.serving.config import ServeConfig
from conftest import REPO, write_trained_encoder

pytestmark = pytest.mark.slow

MAX_LENGTH = 24
KEY = "test-key-123"
TEXTS = ["София е столицата на България.", "Кратко.", "Пловдив е вторият по големина град в страната, "
         "известен с античния си театър, Стария град и тепетата, които се издигат над Тракийската низина."]


def config(*overrides: str) -> ServeConfig:
    return load_config(ServeConfig, str(REPO / "configs/tiny/serve.yaml"), list(overrides))


@pytest.mark.parametrize("overrides, message", [
    (["port=0"], "port must be in [1, 65535]"),
    (["route_prefix=v1"], "route_prefix must start with '/'"),
    (["max_batch_size=0"], "max_batch_size must be >= 1"),
    (["autoscaling=true", "min_replicas=3", "max_replicas=2"], "0 <= min_replicas <= max_replicas"),
    (["api_key=a", "api_key_env=B"], "set api_key or api_key_env, not both"),
    (["overlong_policy=drop"], "overlong_policy must be one of 'truncate', 'error'"),
])
def test_config_mistakes_are_named(overrides, message):
    with pytest.raises(ConfigError) as e:
        config(*overrides)
    assert message in str(e.value)


def test_replicas_get_the_key_s_digest_only():
    app = application(config("model=m", "api_key=s3cret-key"), "m", 0)
    # what Serve stores and hands every replica: the deployment's bound arguments
    stored = pickle.dumps(app._bound_deployment.init_args) + pickle.dumps(app._bound_deployment.init_kwargs)
    assert b"s3cret-key" not in stored and hashlib.sha256(b"s3cret-key").hexdigest().encode() in stored


def test_served_name_and_key_sources(monkeypatch):
    assert config().name == "contrastive"  # the folder of the preset's model, runs/demo/contrastive
    assert config("model=s3://bucket/encoders/bg-7b/?region=eu").name == "bg-7b"
    assert config("served_name=bg-search").name == "bg-search"
    assert config("api_key=abc").resolve_api_key() == "abc" and config().resolve_api_key() is None
    monkeypatch.setenv("SERVE_TEST_KEY", "from-env")
    assert config("api_key_env=SERVE_TEST_KEY").resolve_api_key() == "from-env"
    monkeypatch.delenv("SERVE_TEST_KEY")
    with pytest.raises(ConfigError, match="environment variable SERVE_TEST_KEY is not set"):
        config("api_key_env=SERVE_TEST_KEY").resolve_api_key()


@pytest.fixture(scope="module")
def encoder_dir(mistral_tokenizer_dir, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    # a folder named encoder0 whatever other modules' fixtures made before: the served name is the folder's
    return write_trained_encoder(tmp_path_factory.mktemp("serve", numbered=False) / "encoder0", tokenizer,
                                 max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def encoder(encoder_dir):
    return Bg2Vec.from_pretrained(encoder_dir, device="cpu")


class Job:
    """jobs/serve.py as a subprocess (its own local Ray), its stdout lines collected by a thread."""

    def __init__(self, *args: str, env: dict | None = None):
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / "serve.py"), "--config", str(REPO / "configs/tiny/serve.yaml"), *args],
            cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line.rstrip("\n")) for line in self.process.stdout],
                         daemon=True).start()
        self.shown: list[str] = []

    def wait_for(self, prefix: str, seconds: float = 150) -> str:
        deadline = time.monotonic() + seconds
        while not any(line.startswith(prefix) for line in self.shown):
            try:
                self.shown.append(self.lines.get(timeout=1))
            except queue.Empty:
                assert self.process.poll() is None and time.monotonic() < deadline, (self.shown, self.process.poll())
        return next(line for line in self.shown if line.startswith(prefix))


@pytest.fixture(scope="module")
def servers(encoder_dir):
    """Two jobs/serve.py servers, started at once, each on its own local Ray as users start them: the default
    one (over-long inputs truncated; the key from an environment variable; batches of up to 8 inputs) and
    "strict" at /strict (over-long inputs refused, at most 4 inputs per request, bodies up to 4 KiB, inputs up
    to 1,000 characters, the key in its config)."""
    job_port, port = free_port(), free_port()
    job = Job(f"model={encoder_dir}", f"port={job_port}", "cpus_per_replica=0.5", "max_batch_size=8",
              "batch_wait_timeout_s=0.2", "api_key_env=SERVE_TEST_KEY", env={"SERVE_TEST_KEY": KEY})
    strict = Job(f"model={encoder_dir}", f"port={port}", "cpus_per_replica=0.5", "served_name=strict",
                 "route_prefix=/strict", "overlong_policy=error", "max_inputs_per_request=4", "max_request_bytes=4096",
                 "max_input_chars=1000", f"api_key={KEY}")
    try:
        assert f"http://127.0.0.1:{port}/strict/v1 " in strict.wait_for("serving ")
        job.wait_for("serving ")
        yield {"job": job, "job_url": f"http://127.0.0.1:{job_port}/v1", "strict": f"http://127.0.0.1:{port}/strict/v1"}
    finally:
        for server in (job, strict):
            if server.process.poll() is None:
                server.process.kill()

def http(method: str, url: str, body: object = None, key: str | None = None) -> tuple[int, dict]:
    """(status, decoded JSON body) of one plain HTTP request; a str or bytes body is sent as it is."""
    data = (body.encode() if isinstance(body, str) else body if isinstance(body, bytes) or body is None
            else json.dumps(body, ensure_ascii=False).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def test_vectors_equal_bg2vec_encode(servers, encoder):
    name = "encoder0"  # the model folder's name
    counts = encoder.token_counts(TEXTS)
    assert counts[2] > MAX_LENGTH  # the long text is truncated, as encode truncates it
    expected = encoder.encode(TEXTS)
    api = client(servers["job_url"], KEY)
    for model, encoding_format in ((name, openai.omit), ("bg2vec", "float")):  # omitted: the client asks base64
        response = api.embeddings.create(model=model, input=TEXTS, encoding_format=encoding_format)
        assert response.object == "list" and response.model == name
        assert [d.index for d in response.data] == [0, 1, 2] and {d.object for d in response.data} == {"embedding"}
        np.testing.assert_allclose(np.array([d.embedding for d in response.data]), expected, atol=1e-5)
        assert response.usage.prompt_tokens == response.usage.total_tokens == sum(min(n, MAX_LENGTH) for n in counts)
    raw = api.embeddings.create(model=name, input=TEXTS[0], encoding_format="base64")
    assert len(raw.data) == 1
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(raw.data[0].embedding), "<f4"), expected[0], atol=1e-5)


def test_dimensions_truncate_and_renormalise(servers, encoder):
    response = client(servers["job_url"], KEY).embeddings.create(model="bg2vec", input=TEXTS, dimensions=8)
    vectors = np.array([d.embedding for d in response.data])
    head = encoder.encode(TEXTS)[:, :8]
    assert vectors.shape == (3, 8)
    np.testing.assert_allclose(vectors, head / np.linalg.norm(head, axis=1, keepdims=True), atol=1e-5)


def stats(url: str, key: str | None = None) -> dict:
    status, body = http("GET", url.removesuffix("/v1") + "/stats", key=key)
    assert status == 200, body
    return body


def test_concurrent_requests_share_batches(servers, encoder):
    url = servers["job_url"]
    texts = [f"Изречение номер {i} за проверка на групирането." for i in range(8)]
    before = stats(url, KEY)
    with ThreadPoolExecutor(8) as pool:  # 8 one-text requests at once; the replica batches up to 8 inputs
        responses = list(pool.map(lambda t: client(url, KEY).embeddings.create(model="bg2vec", input=t), texts))
    after = stats(url, KEY)
    np.testing.assert_allclose(np.array([r.data[0].embedding for r in responses]), encoder.encode(texts), atol=1e-5)

    def new(key: str) -> dict[int, int]:
        return {int(k): v - before[key].get(k, 0) for k, v in after[key].items() if v > before[key].get(k, 0)}

    sizes, shared = new("batch_sizes"), new("requests_per_batch")
    assert after["requests"] - before["requests"] == 8 and sum(k * v for k, v in sizes.items()) == 8
    assert after["batches"] - before["batches"] < 8 and max(shared) > 1, (sizes, shared)
    assert after["max_batch_size"] == 8 and max(sizes) <= 8


def test_models_and_health(servers):
    url, name = servers["job_url"], "encoder0"
    api = client(url, KEY)
    assert [m.id for m in api.models.list().data] == [name]
    assert api.models.retrieve("bg2vec").id == "bg2vec" and api.models.retrieve(name).owned_by == "bg2vec"
    with pytest.raises(openai.NotFoundError) as e:
        api.models.retrieve("gpt-4")
    assert e.value.code == "model_not_found"
    assert http("GET", url.removesuffix("/v1") + "/health") == (200, {"status": "ok", "model": name})


LONG = TEXTS[2]
BAD_REQUESTS = {
    "empty list": ({"model": "strict", "input": []}, 400, "input", None, "must not be an empty list"),
    "a number": ({"model": "strict", "input": 5}, 400, "input", None, "string or a list of strings, not a number"),
    "a number in the list": ({"model": "strict", "input": ["a", 2.5]}, 400, "input", None, "input[1] must be a string"),
    "token arrays": ({"model": "strict", "input": [1, 2, 3]}, 400, "input", None, "token arrays are not supported"),
    "empty string": ({"model": "strict", "input": ["a", ""]}, 400, "input", None, "input[1] is an empty string"),
    "too many inputs": ({"model": "strict", "input": ["a"] * 5}, 400, "input", None, "limit of 4 per request"),
    "over-long input": ({"model": "strict", "input": ["a", LONG]}, 400, "input", "context_length_exceeded",
                        f"input[1] takes {{}} tokens, more than this server's limit of {MAX_LENGTH}"),
    "no model": ({"input": "a"}, 400, "model", None, "model is required"),
    "unknown model": ({"model": "text-embedding-3-small", "input": "a"}, 404, "model", "model_not_found",
                      "serves strict (also as bg2vec)"),
    "bad encoding_format": ({"model": "strict", "input": "a", "encoding_format": "int8"}, 400, "encoding_format",
                            None, "'float' or 'base64'"),
    "too many dimensions": ({"model": "strict", "input": "a", "dimensions": 4096}, 400, "dimensions", None,
                            "integer from 1 to 32 (the model's dimension)"),
    "unknown argument": ({"model": "strict", "input": "a", "temperature": 0}, 400, "temperature", None,
                         "unrecognized request argument supplied: temperature"),
    "not JSON": ("{not json", 400, None, None, "not valid JSON"),
    "not UTF-8": (b'{"model": "strict", "input": "\xff"}', 400, None, None, "not valid JSON"),
    "a JSON list": ([1, 2], 400, None, None, "must be a JSON object, not a list"),
    "a lone surrogate": ('{"model": "strict", "input": ["a", "b\\ud800c"]}', 400, "input", None,
                         "input[1] holds a lone UTF-16 surrogate (U+D800) at character 1"),
    "deeply nested": ('{"model": "strict", "input": ' + "[" * 1500 + "]" * 1500 + "}", 400, None, None,
                      "nested too deeply"),
    "an input over max_input_chars": ({"model": "strict", "input": ["a", "б" * 1001]}, 400, "input",
                                      "string_above_max_length", "input[1] has 1,001 characters, more than this "
                                      "server's limit of 1,000 (max_input_chars)"),
    "a body over max_request_bytes": ({"model": "strict", "input": ["a" * 1000] * 5}, 413, None, "request_too_large",
                                      "larger than this server's limit of 4,096 bytes (max_request_bytes)"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_openai_errors(servers, encoder, case):
    body, status, param, code, message = BAD_REQUESTS[case]
    if case == "over-long input":
        message = message.format(encoder.token_counts([LONG])[0])
    got, response = http("POST", servers["strict"] + "/embeddings", body, key=KEY)
    assert got == status, response
    error = response["error"]
    assert set(response) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert message in error["message"]


def test_keys_routes_and_recovery(servers, encoder):
    url = servers["strict"]
    before = stats(url, KEY)
    for key, message in ((None, "needs an API key"), ("wrong", "incorrect API key")):
        status, response = http("POST", url + "/embeddings", {"model": "strict", "input": "a"}, key=key)
        assert status == 401 and response["error"]["code"] == "invalid_api_key", response
        assert message in response["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").models.list()
    assert http("GET", url.removesuffix("/v1") + "/stats")[0] == 401
    status, response = http("GET", url + "/nothing", key=KEY)
    assert status == 404 and "this server offers POST /v1/embeddings" in response["error"]["message"]
    for path in ("/docs", "/redoc", "/openapi.json"):  # FastAPI's own pages are off, key or not
        for key in (None, KEY):
            assert http("GET", url.removesuffix("/v1") + path, key=key)[0] == 404
    with pytest.raises(openai.BadRequestError) as e:
        client(url, KEY).embeddings.create(model="strict", input=[])
    assert e.value.param == "input" and e.value.status_code == 400
    # after every refusal the same replica still serves
    response = client(url, KEY).embeddings.create(model="strict", input=TEXTS[:2])
    np.testing.assert_allclose(np.array([d.embedding for d in response.data]), encoder.encode(TEXTS[:2]), atol=1e-5)
    after = stats(url, KEY)
    assert after["replica"] == before["replica"] and after["requests"] == before["requests"] + 1


def test_a_large_request_is_cut_and_does_not_stall_the_others(servers, encoder):
    """80 inputs of 90,000 characters (14 MB): the replica tokenises only their prefixes, off its event loop,
    so /health answers at once meanwhile; the vectors are encode's of the whole texts. A fast machine may
    answer the big request before /health was asked three times, so it is sent again (up to 10 times)
    until /health was asked three times while one was in flight."""
    url = servers["job_url"]
    base = "Дълъг текст за проверка на сървъра при големи заявки, " * 2000
    texts = [f"{i} {base}"[:90_000] for i in range(80)]
    waits = []
    for _ in range(10):
        answer = {}
        big = threading.Thread(target=lambda answer=answer: answer.update(response=http("POST", url + "/embeddings", {
            "model": "bg2vec", "input": texts}, key=KEY)))
        big.start()
        while big.is_alive():
            began = time.perf_counter()
            assert http("GET", url.removesuffix("/v1") + "/health")[0] == 200
            waits.append(time.perf_counter() - began)  # asked while the big request was in flight
            time.sleep(0.05)
        status, body = answer["response"]
        assert status == 200 and body["usage"]["prompt_tokens"] == 80 * MAX_LENGTH, str(body)[:500]
        if len(waits) >= 3:
            break
    assert len(waits) >= 3 and max(waits) < 1.0, waits
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"][:3]]), encoder.encode(texts[:3]),
                               atol=1e-5)


@pytest.mark.parametrize("args, code, message", [
    (["model=/nonexistent/encoder"], 1, "model /nonexistent/encoder does not exist"),
    (["api_key_env=SERVE_TEST_UNSET"], 1, "environment variable SERVE_TEST_UNSET is not set"),
    (["portt=8001"], 2, "unknown key 'portt' (did you mean 'port'?)"),
    (["port={busy}"], 1, "port={busy} on 127.0.0.1 cannot be used (Address already in use): another server"),
    (["model={folder}"], 1, "model {folder} is not an encoder (no bg2vec_config.json or config.json in it)"),
])
def test_job_refuses_bad_settings(encoder_dir, tmp_path, args, code, message):
    (tmp_path / "notes.txt").write_text("not a model")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        names = {"busy": busy.getsockname()[1], "folder": tmp_path}
        job = Job(f"model={encoder_dir}", *[a.format(**names) for a in args])
        out, err = job.process.communicate(timeout=120)
    message = message.format(**names)
    assert job.process.returncode == code and message in err and "Traceback" not in err, err
    assert "started a local Ray" not in out  # refused before Ray starts


def test_job_stops_cleanly_on_sigterm(servers):
    """Last: stops the module's jobs/serve.py."""
    job = servers["job"]
    url = servers["job_url"]
    assert job.wait_for("serving ").startswith(
        f"serving encoder0 at {url} (POST /v1/embeddings, GET /v1/models, GET /health) as model encoder0 (or bg2vec)")
    job.process.send_signal(signal.SIGTERM)
    job.process.wait(timeout=90)
    job.wait_for("stopped serving", seconds=10)
    err = job.process.stderr.read()
    assert job.process.returncode == 0, err
    assert job.shown[0].startswith("started a local Ray") and job.shown[1].startswith("deploying encoder0 from ")
    assert job.shown[2:] == [job.shown[2], "stopped serving encoder0"] and not err, (job.shown, err)
