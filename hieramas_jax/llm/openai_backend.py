"""Backend for any OpenAI-compatible chat endpoint (OpenAI, OpenRouter, vLLM, SGLang, ...).

One ``openai.AsyncOpenAI`` client per endpoint, with the client's own retries
off: this module retries, so that only 429, 5xx, timeouts and connection errors
are retried (exponential backoff with jitter, ``Retry-After`` honoured) and every
request goes through a global semaphore and its endpoint's semaphore. A call that
still fails is returned as an error response; nothing raises for a failed call.
API keys are read once from the environment and never written into errors,
logs or traces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import os
import random
import time
from typing import Any, Collection, Mapping, Sequence

import httpx2
import openai

from hieramas_jax.llm.base import ConfigError, Message, Response, UnknownModelError, Usage, error_response
from hieramas_jax.llm.pool import ModelSpec, validate_pool
from hieramas_jax.llm.tokens import count_message_tokens, count_tokens

# Local servers (vLLM, llama.cpp, the simulator) take any key; the client needs one.
_DUMMY_KEY = "EMPTY"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """When and how long to wait before sending a failed request again."""

  max_retries: int = 5  # retries after the first attempt
  base_delay_s: float = 0.5  # first backoff; doubles each retry
  max_delay_s: float = 20.0
  max_retry_after_s: float = 60.0  # a longer Retry-After is capped to this


@dataclasses.dataclass(frozen=True)
class _Endpoint:
  base_url: str
  api_key_env: str | None
  limit: int


class _LoopState:
  """Clients and semaphores bound to one event loop (asyncio objects cannot move loops)."""

  def __init__(self, loop: asyncio.AbstractEventLoop, endpoints: Sequence[_Endpoint],
               keys: Mapping[str | None, str], max_concurrency: int, timeout_s: float, transport: str):
    self.loop = loop
    self.global_limit = asyncio.Semaphore(max_concurrency)
    self.endpoint_limit = {e: asyncio.Semaphore(e.limit) for e in endpoints}
    self.clients = {}
    client_class = openai.DefaultAioHttpClient if transport == "aiohttp" else httpx2.AsyncClient
    for e in endpoints:
      http = client_class(
          timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
          limits=httpx2.Limits(max_connections=e.limit, max_keepalive_connections=e.limit),
          follow_redirects=True)
      self.clients[e] = openai.AsyncOpenAI(api_key=keys[e.api_key_env], base_url=e.base_url, max_retries=0,
                                           timeout=timeout_s, http_client=http)

  async def aclose(self) -> None:
    for c in self.clients.values():
      await c.close()


class OpenAIBackend:
  """Chat completions over the OpenAI wire format for a pool of models.

  Args:
    pool: the models; each needs a ``base_url``. Validated here: a missing API key
      variable raises ConfigError naming it before any call is made.
    max_concurrency: most requests in flight over all endpoints.
    timeout_s: per-request timeout (a stalled request counts as a timeout and is retried).
    retry: the retry policy.
    seed_from_sample_index: send the sample index as the request's ``seed`` (servers
      that honour it, like the simulator and vLLM, then give distinct samples for
      distinct indices); off by default because some APIs reject ``seed``.
    environ: where keys are read from (defaults to ``os.environ``).
    jitter_seed: seed of the backoff jitter (None: nondeterministic).
    transport: HTTP transport under the openai client: "aiohttp" (about 40% less
      client CPU per call than httpx, measured on loopback) or "httpx".
  """

  def __init__(self, pool: Sequence[ModelSpec], *, max_concurrency: int = 64, timeout_s: float = 120.0,
               retry: RetryPolicy = RetryPolicy(), seed_from_sample_index: bool = False,
               environ: Mapping[str, str] | None = None, jitter_seed: int | None = None,
               transport: str = "aiohttp"):
    if transport not in ("aiohttp", "httpx"):
      raise ConfigError(f"transport={transport!r}; choose 'aiohttp' or 'httpx'")
    self.transport = transport
    env = os.environ if environ is None else environ
    validate_pool(pool, check_keys=True, environ=env)
    no_url = [s.name for s in pool if not s.base_url]
    if no_url:
      raise ConfigError(f"model(s) {no_url} have no base_url; an OpenAI-compatible backend needs an endpoint "
                        "for every model (use the simulator backend for simulated models)")
    if max_concurrency < 1:
      raise ConfigError(f"max_concurrency={max_concurrency}; it must be >= 1")
    self.specs = {s.name: s for s in pool}
    self.max_concurrency = max_concurrency
    self.timeout_s = timeout_s
    self.retry = retry
    self.seed_from_sample_index = seed_from_sample_index
    groups: dict[tuple[str, str | None], list[ModelSpec]] = {}
    for s in pool:
      groups.setdefault((s.base_url.rstrip("/"), s.api_key_env), []).append(s)
    # An endpoint's limit is the smallest of its models' limits: a server that
    # asks for 8 concurrent requests gets no more than 8, whatever model is asked.
    self._endpoints = {key: _Endpoint(key[0], key[1], min(s.max_concurrency for s in specs))
                       for key, specs in groups.items()}
    self._endpoint_of = {s.name: self._endpoints[(s.base_url.rstrip("/"), s.api_key_env)] for s in pool}
    self._keys: dict[str | None, str] = {None: _DUMMY_KEY}
    for e in self._endpoints.values():
      if e.api_key_env:
        self._keys[e.api_key_env] = env[e.api_key_env]
    self._secrets = tuple(k for k in self._keys.values() if k and k != _DUMMY_KEY and len(k) >= 4)
    self._rng = random.Random(jitter_seed)
    self._state: _LoopState | None = None

  def known_models(self) -> Collection[str]:
    return self.specs.keys()

  def __repr__(self) -> str:  # never the keys
    return f"OpenAIBackend(models={sorted(self.specs)}, max_concurrency={self.max_concurrency})"

  def _loop_state(self) -> _LoopState:
    loop = asyncio.get_running_loop()
    if self._state is None or self._state.loop is not loop:
      # A new event loop (e.g. a second asyncio.run): the old clients belong to
      # a closed loop and cannot be reused.
      self._state = _LoopState(loop, list(self._endpoints.values()), self._keys, self.max_concurrency,
                               self.timeout_s, self.transport)
    return self._state

  def _redact(self, text: str) -> str:
    for secret in self._secrets:
      text = text.replace(secret, "***")
    return text

  def _backoff(self, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
      return min(max(retry_after, 0.0), self.retry.max_retry_after_s)
    cap = min(self.retry.max_delay_s, self.retry.base_delay_s * 2 ** attempt)
    return cap / 2 + self._rng.uniform(0.0, cap / 2)  # "equal jitter": spreads retries, keeps a floor

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int = 0,
                     **params: Any) -> Response:
    spec = self.specs.get(model)
    if spec is None:
      raise UnknownModelError(f"unknown model {model!r}; this backend serves {sorted(self.specs)}")
    state = self._loop_state()
    endpoint = self._endpoint_of[model]
    client = state.clients[endpoint]
    request = dict(params)
    if self.seed_from_sample_index and "seed" not in request:
      request["seed"] = int(sample_index)
    attempt = 0
    while True:
      # Endpoint first: a request queued behind its own busy endpoint must not
      # hold a global slot that another endpoint's request could use.
      async with state.endpoint_limit[endpoint], state.global_limit:
        start = time.perf_counter()
        outcome = await self._attempt(client, spec, messages, request)
        latency = time.perf_counter() - start
      if isinstance(outcome, Response):
        return dataclasses.replace(outcome, latency=latency, attempts=attempt + 1)
      error, retryable, retry_after = outcome
      if not retryable or attempt >= self.retry.max_retries:
        suffix = f" (after {attempt + 1} attempts)" if retryable else ""
        return error_response(model, self._redact(error) + suffix, latency=latency, attempts=attempt + 1)
      await asyncio.sleep(self._backoff(attempt, retry_after))
      attempt += 1

  async def _attempt(self, client: openai.AsyncOpenAI, spec: ModelSpec, messages: Sequence[Message],
                     request: Mapping[str, Any]) -> Response | tuple[str, bool, float | None]:
    """One request: a Response, or (error, retryable, retry_after_s)."""
    try:
      completion = await client.chat.completions.create(model=spec.wire_name, messages=list(messages),
                                                        **request)
    except openai.APITimeoutError:
      return f"timeout after {self.timeout_s:g} s", True, None
    except openai.APIConnectionError as e:
      return f"connection error: {type(e.__cause__ or e).__name__}", True, None
    except openai.APIStatusError as e:
      status = e.status_code
      retryable = status == 429 or status == 408 or status >= 500
      retry_after = _retry_after_s(e.response.headers) if retryable else None
      return f"HTTP {status}: {_short(e.message)}", retryable, retry_after
    except (openai.APIResponseValidationError, ValueError, TypeError, KeyError) as e:
      return f"malformed response body: {type(e).__name__}: {_short(str(e))}", False, None
    except openai.OpenAIError as e:
      return f"{type(e).__name__}: {_short(str(e))}", False, None
    return self._parse(spec, messages, completion)

  def _parse(self, spec: ModelSpec, messages: Sequence[Message], completion: Any) -> Response | tuple:
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list):
      return f"malformed response body: no 'choices' list in a {type(completion).__name__}", False, None
    if not choices:
      return "malformed response body: empty 'choices'", False, None
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str):
      return "malformed response body: the first choice has no text content", False, None
    usage = getattr(completion, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    if not isinstance(prompt, int) or not isinstance(completion_tokens, int):
      prompt, completion_tokens = count_message_tokens(messages), count_tokens(text)
    counted = Usage(prompt, completion_tokens)
    return Response(model=spec.name, text=text, usage=counted, cost=spec.cost(counted))

  async def aclose(self) -> None:
    if self._state is not None and self._state.loop is asyncio.get_running_loop():
      await self._state.aclose()
    self._state = None


def _retry_after_s(headers: Mapping[str, str] | None) -> float | None:
  """Seconds asked by Retry-After / retry-after-ms (seconds or an HTTP date), if any."""
  if not headers:
    return None
  ms = headers.get("retry-after-ms")
  if ms:
    try:
      return float(ms) / 1000.0
    except ValueError:
      pass
  value = headers.get("retry-after")
  if not value:
    return None
  try:
    return float(value)
  except ValueError:
    pass
  try:
    parsed = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return max(0.0, parsed.timestamp() - time.time())


def _short(text: str, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit] + "..."
