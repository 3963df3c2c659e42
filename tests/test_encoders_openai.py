"""The OpenAI embeddings encoder against a local /v1/embeddings server on loopback."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from typing import Any, Iterator

import numpy as np
import pytest

from hieramas_jax import encoders
from hieramas_jax.encoders import hashing
from hieramas_jax.encoders import openai_embeddings

KEY_ENV = "HIERAMAS_TEST_EMBEDDINGS_KEY"
KEY = "test-key-123"
DIM = 8


class FakeEmbeddingsServer:
  """Serves /v1/embeddings in OpenAI wire format with hashing vectors.

  ``failures`` is a list of HTTP statuses returned (in order) before answering.
  """

  def __init__(self):
    self.requests: list[dict[str, Any]] = []
    self.failures: list[int] = []
    self.fail_always: int | None = None
    self.vectors = hashing.HashingEncoder(dim=DIM)
    self.lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):  # keep pytest output clean
        del args

      def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("retry-after-ms", "1")  # keeps the client's retries fast
        self.end_headers()
        self.wfile.write(data)

      def do_POST(self):  # pylint: disable=invalid-name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
          server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                  "body": body})
          status = server.fail_always or (server.failures.pop(0) if server.failures else 200)
        if self.path != "/v1/embeddings":
          return self._send(404, {"error": {"message": "not found"}})
        if status != 200:
          return self._send(status, {"error": {"message": f"injected {status}", "type": "test"}})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
          return self._send(401, {"error": {"message": "bad key"}})
        inputs = body["input"]
        if any(not t for t in inputs):
          return self._send(400, {"error": {"message": "empty input"}})
        vectors = server.vectors.encode(inputs)
        data = []
        for index, vec in enumerate(vectors):
          if body.get("encoding_format") == "base64":
            embedding: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode()
          else:
            embedding = [float(v) for v in vec]
          data.append({"object": "embedding", "index": index, "embedding": embedding})
        data.reverse()  # the client must order by index, not by position
        return self._send(200, {"object": "list", "data": data, "model": body["model"],
                                "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self.thread = threading.Thread(
        target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

  def __enter__(self) -> "FakeEmbeddingsServer":
    self.thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server(monkeypatch) -> Iterator[FakeEmbeddingsServer]:
  monkeypatch.setenv(KEY_ENV, KEY)
  with FakeEmbeddingsServer() as srv:
    yield srv


def make(server: FakeEmbeddingsServer, **kwargs) -> openai_embeddings.OpenAIEmbeddingEncoder:
  kwargs.setdefault("dim", DIM)
  return openai_embeddings.OpenAIEmbeddingEncoder(
      "fake-embedder", base_url=server.base_url, api_key_env=KEY_ENV, **kwargs)


def test_encodes_in_batches_in_input_order(server):
  texts = [f"text number {i}" for i in range(7)] + [""]
  enc = make(server, batch_size=3, max_concurrency=2)
  out = enc.encode(texts)
  assert out.shape == (8, DIM) and out.dtype == np.float32
  expected = server.vectors.encode(texts[:-1] + [" "])  # empty text goes out as one space
  np.testing.assert_allclose(out, expected, atol=1e-7)
  assert sorted(len(r["body"]["input"]) for r in server.requests) == [2, 3, 3]
  assert {r["path"] for r in server.requests} == {"/v1/embeddings"}
  assert {r["body"]["model"] for r in server.requests} == {"fake-embedder"}
  assert enc.encoder_id == f"openai:{server.base_url}:fake-embedder"


def test_retries_rate_limits_and_server_errors(server):
  server.failures = [429, 503]
  out = make(server, max_retries=3).encode(["retry me"])
  assert len(server.requests) == 3
  np.testing.assert_allclose(out, server.vectors.encode(["retry me"]), atol=1e-7)


def test_gives_up_with_a_clear_error(server):
  server.fail_always = 500
  with pytest.raises(openai_embeddings.EmbeddingRequestError, match="fake-embedder.*failed"):
    make(server, max_retries=1).encode(["never works"])
  assert len(server.requests) == 2  # the first try and one retry


def test_unknown_dim_is_probed_once(server):
  enc = make(server, dim=None)
  assert enc.dim == DIM and len(server.requests) == 1
  assert enc.encode(["a", "b"]).shape == (2, DIM)


def test_missing_key_names_the_variable(monkeypatch):
  monkeypatch.delenv("HIERAMAS_NO_SUCH_KEY", raising=False)
  with pytest.raises(EnvironmentError, match="HIERAMAS_NO_SUCH_KEY"):
    encoders.make_encoder("openai", model="m", base_url="http://127.0.0.1:9/v1",
                          api_key_env="HIERAMAS_NO_SUCH_KEY")


def test_make_encoder_openai_with_cache(server, tmp_path):
  kwargs = dict(model="fake-embedder", base_url=server.base_url, api_key_env=KEY_ENV, dim=DIM,
                cache_dir=tmp_path)
  first = encoders.make_encoder("openai", **kwargs).encode(["x", "y"])
  assert len(server.requests) == 1
  second = encoders.make_encoder("openai", **kwargs).encode(["y", "x"])
  assert len(server.requests) == 1  # served from the cache
  np.testing.assert_array_equal(second, first[::-1])
