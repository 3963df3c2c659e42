"""The simulated pool served over HTTP in the OpenAI wire format, with fault injection.

``SimServer`` serves ``GET /v1/models`` and ``POST /v1/chat/completions`` from a
:class:`~hieramas_jax.llm.sim.SimulatedBackend`, so that the real ``openai``
client path (connection pool, retries, parsing) is exercised end to end on
loopback. It can add latency and inject faults: 429 with ``Retry-After``, 500,
stalls past the client's timeout, malformed JSON bodies, empty ``choices`` and
answers cut at max_tokens (``finish_reason`` "length"). With ``api_key`` set it
answers a wrong key with 401; an unknown model gets 404 (both in the OpenAI
error format, with ``code`` "invalid_api_key" / "model_not_found"). It answers
the preflight probe (``llm.preflight.PROBE_MESSAGES``) with "OK" for any model it
serves; a probe meets only the per-model faults unless ``FaultConfig.probe_faults``.
``GET /stats`` reports requests, the most requests ever in flight and each
model's last request fields (``last_params``: the body without its messages);
``POST /stats/reset`` zeroes them.

``strict_models`` answer like OpenAI's GPT-5 family and o-series: HTTP 400 in
OpenAI's error format to ``max_tokens`` ("Unsupported parameter", code
"unsupported_parameter") and to a temperature other than 1 ("Unsupported value",
code "unsupported_value"), probes included, so that per-model request options
(``ModelSpec.max_tokens_param``, ``fixed_temperature``) are tested end to end.

``ServerThread`` runs a server on its own event loop in a thread (tests);
``launch/sim_server.py`` is the command line.

The request's ``seed`` field, when present, is the simulator's sample index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import threading
import time
import uuid
from typing import Any, Collection, Mapping

from aiohttp import web

from hieramas_jax.llm.base import UnknownModelError
from hieramas_jax.llm.preflight import PROBE_MESSAGES
from hieramas_jax.llm.sim import SimulatedBackend
from hieramas_jax.llm.tokens import approx_tokens

FAULT_KINDS = ("429", "500", "stall", "malformed", "empty", "length")
_PROBE = [dict(m) for m in PROBE_MESSAGES]


@dataclasses.dataclass(frozen=True)
class FaultConfig:
  """Which requests fail and how.

  Attributes:
    rate_429, rate_500, rate_stall, rate_malformed, rate_empty, rate_length: chance
      per request of each fault (drawn from a seeded RNG in arrival order);
      "length" answers the first half of the text with finish_reason "length".
    first_attempts: the first this-many attempts of every distinct request (same
      model, messages and seed) fail with ``first_kind``; later ones succeed.
    first_kind: the fault of ``first_attempts``.
    model_faults: model name -> fault kind for every request to that model.
    retry_after_s: the Retry-After header of a 429.
    stall_s: how long a stalled request hangs before answering normally.
    seed: seed of the fault RNG.
    probe_faults: whether preflight probes meet the rate and first-attempt faults
      too (by default only ``model_faults``, the faults of a broken model).
  """

  rate_429: float = 0.0
  rate_500: float = 0.0
  rate_stall: float = 0.0
  rate_malformed: float = 0.0
  rate_empty: float = 0.0
  rate_length: float = 0.0
  first_attempts: int = 0
  first_kind: str = "429"
  model_faults: Mapping[str, str] = dataclasses.field(default_factory=dict)
  retry_after_s: float = 0.05
  stall_s: float = 30.0
  seed: int = 0
  probe_faults: bool = False

  def __post_init__(self):
    for kind in (self.first_kind, *self.model_faults.values()):
      if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; choose from {FAULT_KINDS}")


@dataclasses.dataclass
class ServerStats:
  requests: int = 0  # chat completion requests received
  completed: int = 0  # answered 200 with a completion
  in_flight: int = 0
  max_in_flight: int = 0
  faults: dict[str, int] = dataclasses.field(default_factory=dict)
  rejected: int = 0  # 4xx answers (bad request, unknown model, bad key, unsupported parameter)
  probes: int = 0  # preflight probes answered 200
  unsupported: int = 0  # 400s of strict models to max_tokens or temperature != 1 (counted in rejected too)
  last_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # model -> body sans messages

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def api_key_from_env(env_name: str | None) -> str | None:
  """The key a server requires, read from the environment variable a launcher's --api_key_env names."""
  if not env_name:
    return None
  key = os.environ.get(env_name)
  if not key:
    raise ValueError(f"--api_key_env={env_name} but that environment variable is not set")
  return key


def models_response(names: Collection[str], owned_by: str) -> web.Response:
  """The OpenAI ``GET /v1/models`` body for the served model ids."""
  created = int(time.time())
  return web.json_response({"object": "list", "data": [
      {"id": m, "object": "model", "created": created, "owned_by": owned_by} for m in names]})


def _error(status: int, message: str, kind: str, headers: Mapping[str, str] | None = None,
           code: str | None = None, param: str | None = None) -> web.Response:
  body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
  return web.json_response(body, status=status, headers=headers)


def reasoning_model_refusal(body: Mapping[str, Any]) -> web.Response | None:
  """OpenAI's HTTP 400 for a GPT-5-family / o-series request with ``max_tokens`` or temperature != 1; else None.

  The wording, ``param`` and ``code`` are those of api.openai.com's answers.
  """
  if "max_tokens" in body:
    return _error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                  "Use 'max_completion_tokens' instead.", "invalid_request_error", code="unsupported_parameter",
                  param="max_tokens")
  temperature = body.get("temperature")
  if temperature is not None and temperature != 1:
    return _error(400, f"Unsupported value: 'temperature' does not support {json.dumps(temperature)} with this "
                  "model. Only the default (1) value is supported.", "invalid_request_error",
                  code="unsupported_value", param="temperature")
  return None


class SimServer:
  """An aiohttp application around a SimulatedBackend.

  Args:
    backend: the simulator (its world, task and registered problems).
    latency_s: fixed seconds added to every answer; None: each model's simulated
      latency times ``latency_scale``.
    latency_jitter_s: uniform jitter (+/-) on a fixed latency.
    latency_scale: factor on simulated latencies when ``latency_s`` is None.
    faults: fault injection.
    api_key: when set, requests must carry ``Authorization: Bearer <api_key>``.
    strict_models: served model names that refuse ``max_tokens`` and temperature
      != 1 the way OpenAI's GPT-5 family does (HTTP 400, see ``reasoning_model_refusal``).

  Raises:
    ValueError: ``strict_models`` names a model the simulator does not serve.
  """

  def __init__(self, backend: SimulatedBackend, *, latency_s: float | None = 0.0, latency_jitter_s: float = 0.0,
               latency_scale: float = 1.0, faults: FaultConfig = FaultConfig(), api_key: str | None = None,
               strict_models: Collection[str] = ()):
    unknown = sorted(set(strict_models) - set(backend.known_models()))
    if unknown:
      raise ValueError(f"strict_models names model(s) {unknown} the simulator does not serve; it serves "
                       f"{sorted(backend.known_models())}")
    self.strict_models = frozenset(strict_models)
    self.backend = backend
    self.latency_s = latency_s
    self.latency_jitter_s = latency_jitter_s
    self.latency_scale = latency_scale
    self.faults = faults
    self.api_key = api_key
    self.stats = ServerStats()
    self._rng = random.Random(faults.seed)
    self._attempts: dict[bytes, int] = {}
    self.app = web.Application(client_max_size=64 * 2**20)
    self.app.router.add_get("/v1/models", self._models)
    self.app.router.add_post("/v1/chat/completions", self._chat)
    self.app.router.add_get("/stats", self._stats)
    self.app.router.add_post("/stats/reset", self._reset)

  # -- handlers -------------------------------------------------------------
  async def _models(self, request: web.Request) -> web.Response:
    del request
    return models_response(self.backend.known_models(), "simulator")

  async def _stats(self, request: web.Request) -> web.Response:
    del request
    return web.json_response(self.stats.to_json())

  async def _reset(self, request: web.Request) -> web.Response:
    del request
    self.reset_stats()
    return web.json_response({"ok": True})

  def reset_stats(self) -> None:
    """Zeroes the counters (requests still in flight stay counted as in flight)."""
    stats = self.stats
    stats.requests = stats.completed = stats.rejected = stats.probes = stats.unsupported = 0
    stats.max_in_flight = stats.in_flight
    stats.faults = {}
    stats.last_params = {}
    self._attempts.clear()

  def _pick_fault(self, model: str, fingerprint: bytes, probe: bool) -> str | None:
    f = self.faults
    if model in f.model_faults:
      return f.model_faults[model]
    if probe and not f.probe_faults:
      return None
    if f.first_attempts:
      seen = self._attempts.get(fingerprint, 0)
      self._attempts[fingerprint] = seen + 1
      if seen < f.first_attempts:
        return f.first_kind
    draw = self._rng.random()
    for kind, rate in (("429", f.rate_429), ("500", f.rate_500), ("stall", f.rate_stall),
                       ("malformed", f.rate_malformed), ("empty", f.rate_empty), ("length", f.rate_length)):
      if draw < rate:
        return kind
      draw -= rate
    return None

  def _latency(self, simulated: float) -> float:
    if self.latency_s is None:
      return simulated * self.latency_scale
    if self.latency_jitter_s:
      return max(0.0, self.latency_s + self._rng.uniform(-self.latency_jitter_s, self.latency_jitter_s))
    return self.latency_s

  async def _chat(self, request: web.Request) -> web.StreamResponse:
    stats = self.stats  # one object for the server's life: reset_stats zeroes it in place
    stats.requests += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
      return await self._answer(request, stats)
    finally:
      stats.in_flight -= 1

  async def _answer(self, request: web.Request, stats: ServerStats) -> web.StreamResponse:
    if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
      stats.rejected += 1
      return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
    try:
      body = await request.json()
      model, messages = body["model"], body["messages"]
      sample_index = int(body.get("seed") or 0)
      if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TypeError("messages must be a list of objects")
    except (ValueError, KeyError, TypeError) as e:
      stats.rejected += 1
      return _error(400, f"bad request body: {e}", "invalid_request_error")
    if isinstance(model, str):
      stats.last_params[model] = {k: v for k, v in body.items() if k != "messages"}
    if model not in self.backend.known_models():
      stats.rejected += 1
      return _error(404, f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error", code="model_not_found")
    if model in self.strict_models:
      refusal = reasoning_model_refusal(body)
      if refusal is not None:
        stats.rejected += 1
        stats.unsupported += 1
        return refusal
    fingerprint = hashlib.blake2b(json.dumps([model, messages, sample_index], sort_keys=True).encode(),
                                  digest_size=16).digest()
    probe = messages == _PROBE
    fault = self._pick_fault(model, fingerprint, probe)
    if fault is not None:
      stats.faults[fault] = stats.faults.get(fault, 0) + 1
    if fault == "429":
      return _error(429, "rate limit reached (simulated)", "rate_limit_error",
                    headers={"Retry-After": f"{self.faults.retry_after_s:g}"})
    if fault == "500":
      return _error(500, "internal error (simulated)", "server_error")
    if fault == "stall":
      await asyncio.sleep(self.faults.stall_s)
    if probe:  # a preflight check: any served model answers it, no problem needed
      text, finish_reason, prompt_tokens, completion_tokens = "OK", "stop", approx_tokens(_PROBE[0]["content"]), 1
    else:
      try:
        response = self.backend.answer(
            model, [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in messages],
            sample_index)
      except UnknownModelError as e:
        stats.rejected += 1
        return _error(404, str(e), "invalid_request_error", code="model_not_found")
      delay = self._latency(response.latency)
      if delay > 0:
        await asyncio.sleep(delay)
      if not response.ok and fault != "malformed":
        if "no registered problem" in (response.error or ""):
          stats.rejected += 1
          return _error(400, response.error or "", "invalid_request_error")
        return _error(500, response.error or "simulator failure", "server_error")
      text, finish_reason = response.text, response.finish_reason or "stop"
      prompt_tokens, completion_tokens = response.usage.prompt_tokens, response.usage.completion_tokens
    if fault == "malformed":
      return web.Response(status=200, text='{"id": "chatcmpl-sim", "object": "chat.completion", "choices": [{"ind',
                          content_type="application/json")
    if fault == "length":  # cut at "max_tokens": half the text, the way a truncated answer arrives
      text, finish_reason, completion_tokens = text[:len(text) // 2], "length", max(1, completion_tokens // 2)
    body = _completion(model, text, finish_reason, prompt_tokens, completion_tokens)
    if fault == "empty":
      body["choices"] = []
    if probe:
      stats.probes += 1
    else:
      stats.completed += 1
    return web.json_response(body)


def _completion(model: str, text: str, finish_reason: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
  """A chat.completion body in the OpenAI wire format."""
  return {
      "id": f"chatcmpl-sim-{uuid.uuid4().hex[:16]}",
      "object": "chat.completion",
      "created": int(time.time()),
      "model": model,
      "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                   "logprobs": None}],
      "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens},
  }


class ServerThread:
  """Runs a SimServer (or any server with an aiohttp ``app``) on 127.0.0.1 in a background thread.

  A context manager.

  ``base_url`` is the OpenAI base URL (``http://host:port/v1``).
  """

  def __init__(self, server: SimServer, *, host: str = "127.0.0.1", port: int = 0):
    self.server = server
    self.host = host
    self._port = port
    self.port: int | None = None
    self._loop = asyncio.new_event_loop()
    self._runner: web.AppRunner | None = None
    self._ready = threading.Event()
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._main, name="sim-server", daemon=True)

  @property
  def base_url(self) -> str:
    return f"http://{self.host}:{self.port}/v1"

  def _main(self) -> None:
    asyncio.set_event_loop(self._loop)
    try:
      self._loop.run_until_complete(self._start())
    except BaseException as e:  # pylint: disable=broad-except  # reported by start()
      self._error = e
      self._ready.set()
      return
    self._ready.set()
    self._loop.run_forever()
    self._loop.run_until_complete(self._runner.cleanup())
    self._loop.close()

  async def _start(self) -> None:
    # Cancel a handler when its client goes away, so stalls do not linger.
    self._runner = web.AppRunner(self.server.app, handler_cancellation=True, access_log=None)
    await self._runner.setup()
    site = web.TCPSite(self._runner, self.host, self._port, backlog=1024)
    await site.start()
    self.port = self._runner.addresses[0][1]

  def start(self, timeout_s: float = 10.0) -> "ServerThread":
    self._thread.start()
    if not self._ready.wait(timeout_s):
      raise TimeoutError(f"the simulator server did not start within {timeout_s} s")
    if self._error is not None:
      raise RuntimeError(f"the simulator server failed to start: {self._error}") from self._error
    return self

  def stop(self, timeout_s: float = 10.0) -> None:
    if self._thread.is_alive():
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(timeout_s)

  def __enter__(self) -> "ServerThread":
    return self.start()

  def __exit__(self, *exc: Any) -> None:
    self.stop()


async def serve(server: Any, host: str, port: int, *, ready_message: bool = True, name: str = "sim_server") -> None:
  """Serves ``server.app`` until cancelled (the command line's main loop; launch.serve_local's too)."""
  runner = web.AppRunner(server.app, handler_cancellation=True, access_log=None)
  await runner.setup()
  site = web.TCPSite(runner, host, port, backlog=1024)
  await site.start()
  if ready_message:
    bound = runner.addresses[0]
    print(f"{name} listening on http://{bound[0]}:{bound[1]}/v1", flush=True)
  try:
    await asyncio.Event().wait()
  finally:
    await runner.cleanup()
