"""Backend for any OpenAI-compatible chat endpoint (OpenAI, OpenRouter, vLLM, SGLang, ...).

One ``openai.AsyncOpenAI`` client per endpoint and event loop, with the client's
own retries off: this module retries, so that only 429, 5xx, timeouts, connection
errors and malformed bodies are retried (exponential backoff with jitter,
``Retry-After`` honoured) and every request goes through a global semaphore and
its endpoint's semaphore. A call that still fails is returned as an error
response whose error names the real cause ("connection refused", "DNS lookup
failed for host X", "HTTP 401 unauthorized (check the API key in $VAR)", ...);
nothing raises for a failed call. API keys are read once from the environment and
never written into errors, logs or traces.

Each request is shaped by its model's spec: the token cap goes under
``max_tokens_param``, a ``fixed_temperature`` replaces the call's and the
``extra_body`` fields are added (see :class:`~hieramas_jax.llm.pool.ModelSpec`).
An endpoint that still refuses a parameter (HTTP 400 "Unsupported parameter" /
"Unsupported value") gets a non-retried error naming the option to set.

HTTP sessions belong to an event loop. The backend opens them lazily on each loop
it is used from and closes them: with ``close()`` / ``aclose()`` (every loop),
when a loop shuts down through ``asyncio.run`` or ``asyncio.Runner.close`` (its
async-generator shutdown), or at interpreter exit (``openai_clients``). The causes
of failed requests are worded in ``openai_errors``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import threading
import time
import urllib.parse
from typing import Any, Collection, Mapping, Sequence

import openai

from hieramas_jax.llm.base import ConfigError, Message, Response, UnknownModelError, Usage, error_response
from hieramas_jax.llm.openai_clients import Endpoint, LoopState
from hieramas_jax.llm.openai_errors import Failure, connection_failure, retry_after_s, seconds_text, short_text
from hieramas_jax.llm.openai_errors import status_failure
from hieramas_jax.llm.pool import ModelSpec, validate_pool
from hieramas_jax.llm.preflight import PROBE_MAX_TOKENS, PROBE_MESSAGES
from hieramas_jax.llm.tokens import count_message_tokens, count_tokens

# The error helpers' names from before they moved to openai_errors (tests import them from here).
_connection_failure, _status_failure, _retry_after_s = connection_failure, status_failure, retry_after_s


_LOG = logging.getLogger(__name__)

# Local servers (vLLM, llama.cpp, the simulator) take any key; the client needs one.
_DUMMY_KEY = "EMPTY"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """When and how long to wait before sending a failed request again."""

  max_retries: int = 5  # retries after the first attempt
  base_delay_s: float = 0.5  # first backoff; doubles each retry
  max_delay_s: float = 20.0
  max_retry_after_s: float = 60.0  # a longer Retry-After is capped to this


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
    self._endpoints = {key: Endpoint(key[0], key[1], min(s.max_concurrency for s in specs))
                       for key, specs in groups.items()}
    self._endpoint_of = {s.name: self._endpoints[(s.base_url.rstrip("/"), s.api_key_env)] for s in pool}
    self._keys: dict[str | None, str] = {None: _DUMMY_KEY}
    for e in self._endpoints.values():
      if e.api_key_env:
        self._keys[e.api_key_env] = env[e.api_key_env]
    self._secrets = tuple(k for k in self._keys.values() if k and k != _DUMMY_KEY and len(k) >= 4)
    self._rng = random.Random(jitter_seed)
    self._states: list[LoopState] = []
    self._states_lock = threading.Lock()

  def known_models(self) -> Collection[str]:
    return self.specs.keys()

  def base_url(self, model: str) -> str:
    """The endpoint ``model`` is served from (no trailing slash)."""
    return self._endpoint_of[model].base_url

  def cache_identity(self, model: str) -> dict[str, Any]:
    """Everything besides the call's parameters that decides the answer (part of the response cache key).

    The model's request options are included only where they differ from the
    defaults, so that models without options keep the keys they had before options existed.
    """
    spec = self.specs[model]
    identity = {"base_url": self._endpoint_of[model].base_url, "wire_name": spec.wire_name,
                "seed_from_sample_index": self.seed_from_sample_index}
    options = spec.request_options()
    if options:
      identity["request_options"] = options
    return identity

  def __repr__(self) -> str:  # never the keys
    return f"OpenAIBackend(models={sorted(self.specs)}, max_concurrency={self.max_concurrency})"

  async def _loop_state(self) -> LoopState:
    loop = asyncio.get_running_loop()
    with self._states_lock:
      for state in self._states:
        if state.loop is loop and not state.closed:
          return state
      # A new event loop (e.g. a second asyncio.run): clients cannot move between
      # loops, so this loop gets its own; closed ones are forgotten.
      self._states = [s for s in self._states if not s.closed]
      state = LoopState(loop, list(self._endpoints.values()), self._keys, self.max_concurrency,
                         self.timeout_s, self.transport)
      self._states.append(state)
    await state.start()
    return state

  def _take_states(self) -> list[LoopState]:
    with self._states_lock:
      states, self._states = self._states, []
    return states

  def _redact(self, text: str) -> str:
    for secret in self._secrets:
      text = text.replace(secret, "***")
    return text

  def _backoff(self, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
      return min(max(retry_after, 0.0), self.retry.max_retry_after_s)
    cap = min(self.retry.max_delay_s, self.retry.base_delay_s * 2 ** attempt)
    return cap / 2 + self._rng.uniform(0.0, cap / 2)  # "equal jitter": spreads retries, keeps a floor

  def _request(self, spec: ModelSpec, params: Mapping[str, Any], sample_index: int) -> dict[str, Any]:
    """The generation fields of one request to ``spec``'s model (its extra_body is added by ``_attempt``)."""
    request = spec.wire_params(params)
    if self.seed_from_sample_index and "seed" not in request:
      request["seed"] = int(sample_index)
    return request

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int = 0,
                     **params: Any) -> Response:
    spec = self.specs.get(model)
    if spec is None:
      raise UnknownModelError(f"unknown model {model!r}; this backend serves {sorted(self.specs)}")
    state = await self._loop_state()
    endpoint = self._endpoint_of[model]
    client = state.clients[endpoint]
    request = self._request(spec, params, sample_index)
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
      if not outcome.retryable or attempt >= self.retry.max_retries:
        suffix = f" (after {attempt + 1} attempts)" if outcome.retryable else ""
        return error_response(model, outcome.cause + suffix, latency=latency, attempts=attempt + 1)
      await asyncio.sleep(self._backoff(attempt, outcome.retry_after_s))
      attempt += 1

  async def probe(self, model: str, *, timeout_s: float) -> Failure | None:
    """One tiny real request to ``model``, for a preflight check; None when it answered.

    Finishes within ``timeout_s``. Definite failures (refused, DNS, 401, 404, ...)
    are reported at once; a 429 is retried until the deadline and then counts as
    alive (the endpoint answers, it is only busy); a 5xx, a timeout-free
    disconnect or a malformed body gets one more try.
    """
    spec = self.specs.get(model)
    if spec is None:
      raise UnknownModelError(f"unknown model {model!r}; this backend serves {sorted(self.specs)}")
    deadline = time.monotonic() + timeout_s
    state = await self._loop_state()
    client = state.clients[self._endpoint_of[model]]
    request = self._request(spec, {"max_tokens": PROBE_MAX_TOKENS}, 0)
    second_try = True
    while True:
      remaining = deadline - time.monotonic()
      outcome = await self._attempt(client, spec, PROBE_MESSAGES, request, timeout_s=max(remaining, 0.01))
      if isinstance(outcome, Response):
        return None
      remaining = deadline - time.monotonic()
      if outcome.kind == "rate_limited":
        if remaining < 0.5:
          _LOG.warning("preflight: %s at %s is rate limited (HTTP 429) but reachable", model,
                       self.base_url(model))
          return None
        await asyncio.sleep(min(outcome.retry_after_s or 0.25, remaining - 0.25))
        continue
      if second_try and outcome.kind in ("server", "malformed", "disconnected", "connection") and remaining > 1.0:
        second_try = False
        await asyncio.sleep(min(outcome.retry_after_s or 0.2, remaining / 4))
        continue
      if outcome.kind in ("timeout", "connect_timeout"):  # the wait since the probe began, not this attempt's
        return dataclasses.replace(outcome, cause=f"timeout after {seconds_text(timeout_s)} s")
      return outcome

  async def _attempt(self, client: openai.AsyncOpenAI, spec: ModelSpec, messages: Sequence[Message],
                     request: Mapping[str, Any], timeout_s: float | None = None) -> Response | Failure:
    """One request: a Response, or the Failure saying why not."""
    base_url = self._endpoint_of[spec.name].base_url
    extra: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
    if spec.extra_body:
      extra["extra_body"] = spec.extra_body.to_dict()  # a fresh dict: the client may merge into it
    try:
      completion = await client.chat.completions.create(model=spec.wire_name, messages=list(messages),
                                                        **request, **extra)
    except openai.APIConnectionError as e:  # APITimeoutError included
      timeout = self.timeout_s if timeout_s is None else timeout_s
      failure = connection_failure(e, host=urllib.parse.urlsplit(base_url).hostname, timeout_s=timeout,
                                    connect_timeout_s=min(10.0, timeout) if timeout_s is None else timeout)
    except openai.APIStatusError as e:
      failure = status_failure(e, spec, base_url)
    except (openai.APIResponseValidationError, ValueError, TypeError, KeyError) as e:
      failure = Failure(f"malformed response body: {type(e).__name__}: {short_text(str(e), 200)}", "malformed",
                        True)
    except openai.OpenAIError as e:
      failure = Failure(f"{type(e).__name__}: {short_text(str(e))}", "other", False)
    else:
      return self._parse(spec, messages, completion)
    return dataclasses.replace(failure, cause=self._redact(failure.cause))

  def _parse(self, spec: ModelSpec, messages: Sequence[Message], completion: Any) -> Response | Failure:
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list):
      return Failure(f"malformed response body: no 'choices' list in a {type(completion).__name__}",
                     "malformed", True)
    if not choices:
      return Failure("malformed response body: empty 'choices'", "malformed", True)
    finish_reason = getattr(choices[0], "finish_reason", None)
    finish_reason = finish_reason if isinstance(finish_reason, str) else None
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if text is None and finish_reason == "length":
      # A reasoning model that spent the whole cap on hidden reasoning: a truncated empty reply.
      text = ""
    if not isinstance(text, str):
      if finish_reason not in (None, "stop"):  # e.g. content_filter, tool_calls: asking again will not help
        return Failure(f"no text in the answer (finish_reason {finish_reason!r})", "no_text", False)
      return Failure("malformed response body: the first choice has no text content", "malformed", True)
    usage = getattr(completion, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    if not isinstance(prompt, int) or not isinstance(completion_tokens, int):
      prompt, completion_tokens = count_message_tokens(messages), count_tokens(text)
    counted = Usage(prompt, completion_tokens)
    return Response(model=spec.name, text=text, usage=counted, cost=spec.cost(counted),
                    finish_reason=finish_reason)

  async def aclose(self) -> None:
    """Closes the HTTP clients on every event loop this backend used (awaitable from any loop)."""
    running = asyncio.get_running_loop()
    for state in self._take_states():
      if state.loop is running:
        await state.aclose()
      else:
        await asyncio.to_thread(state.close_from_outside)

  def close(self) -> None:
    """Closes the HTTP clients on every event loop this backend used.

    Call it where no event loop runs in this thread (from a coroutine, ``await
    aclose()`` instead). The backend stays usable: a later call opens new clients.

    Raises:
      RuntimeError: called from a coroutine running on one of the backend's loops.
    """
    try:
      running = asyncio.get_running_loop()
    except RuntimeError:
      running = None
    if running is not None and any(s.loop is running and not s.closed for s in self._states):
      raise RuntimeError("OpenAIBackend.close() was called from a coroutine on the backend's event loop; "
                         "use `await backend.aclose()` there")
    for state in self._take_states():
      state.close_from_outside()
