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
async-generator shutdown), or at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import email.utils
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any, AsyncIterator, Collection, Mapping, Sequence

import aiohttp
import httpx2
import openai

from hieramas_jax.llm.base import ConfigError, Message, Response, UnknownModelError, Usage, error_response
from hieramas_jax.llm.pool import ModelSpec, validate_pool
from hieramas_jax.llm.preflight import PROBE_MAX_TOKENS, PROBE_MESSAGES
from hieramas_jax.llm.tokens import count_message_tokens, count_tokens


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


@dataclasses.dataclass(frozen=True)
class _Endpoint:
  base_url: str
  api_key_env: str | None
  limit: int


@dataclasses.dataclass(frozen=True)
class Failure:
  """Why one request failed.

  Attributes:
    cause: the cause in words, without any key ("connection refused", "HTTP 401
      unauthorized (check the API key in $OPENAI_API_KEY)", ...).
    kind: a stable tag: refused, dns, tls, disconnected, connect_timeout, timeout,
      connection, unauthorized, forbidden, model_not_found, not_found, rate_limited,
      quota, server, unsupported (a request parameter the model refuses), client,
      malformed, no_text, other.
    retryable: whether the same request may succeed later.
    retry_after_s: seconds the server asked to wait (Retry-After), if any.
  """

  cause: str
  kind: str
  retryable: bool
  retry_after_s: float | None = None


def _seconds(value: float) -> str:
  return f"{value:.3g}"


def _exception_chain(exc: BaseException) -> list[BaseException]:
  """exc, its cause, the cause's cause, ... (``__context__`` where no ``__cause__``; aiohttp's ``os_error``)."""
  chain: list[BaseException] = []
  seen: set[int] = set()
  current: BaseException | None = exc
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    chain.append(current)
    nested = getattr(current, "os_error", None)
    current = current.__cause__ or current.__context__ or (nested if isinstance(nested, BaseException) else None)
  return chain


_DNS_ERRORS = (socket.gaierror,) + tuple(
    t for t in (getattr(aiohttp, "ClientConnectorDNSError", None),) if t is not None)  # aiohttp >= 3.10
_TLS_ERRORS = (ssl.SSLError, ssl.CertificateError, aiohttp.ClientSSLError)
_DISCONNECT_ERRORS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, httpx2.RemoteProtocolError,
                      aiohttp.ServerDisconnectedError)
_AIOHTTP_CONNECT_TIMEOUTS = tuple(
    t for t in (getattr(aiohttp, "ConnectionTimeoutError", None),) if t is not None)  # aiohttp >= 3.10


def _connection_failure(exc: BaseException, *, host: str | None, timeout_s: float,
                        connect_timeout_s: float) -> Failure:
  """The cause of a request that got no HTTP answer, from the exception chain.

  openai wraps transport errors in APIConnectionError / APITimeoutError; the
  aiohttp transport even maps a refused connection to a *connect timeout*, so the
  words come from the innermost errors (ConnectionRefusedError, socket.gaierror,
  ...), not from the outer type.
  """
  chain = _exception_chain(exc)

  def first(*types: type) -> BaseException | None:
    return next((e for e in chain if isinstance(e, types)), None)

  if first(ConnectionRefusedError) is not None:
    return Failure("connection refused", "refused", True)
  if first(*_DNS_ERRORS) is not None:
    return Failure(f"DNS lookup failed for host {host or '?'}", "dns", True)
  tls = first(*_TLS_ERRORS)
  if tls is not None:
    return Failure(f"TLS error: {_short(str(tls), 200)}", "tls", False)
  if first(*_DISCONNECT_ERRORS) is not None:
    return Failure("connection closed by the server before it answered", "disconnected", True)
  # aiohttp's ConnectionTimeoutError is a connect timeout; httpx's ConnectTimeout is
  # one only without aiohttp below it (the aiohttp transport maps more to it).
  if ((_AIOHTTP_CONNECT_TIMEOUTS and first(*_AIOHTTP_CONNECT_TIMEOUTS) is not None) or
      (first(httpx2.ConnectTimeout) is not None and first(aiohttp.ClientError) is None)):
    return Failure(f"connect timeout after {_seconds(connect_timeout_s)} s", "connect_timeout", True)
  # Before the timeouts: the aiohttp transport reports any failed connect as a timeout.
  os_error = next((e for e in reversed(chain)
                   if isinstance(e, OSError) and not isinstance(e, TimeoutError) and e.strerror), None)
  if os_error is not None:
    return Failure(f"connection error: {os_error.strerror}", "connection", True)
  if first(TimeoutError, httpx2.TimeoutException, openai.APITimeoutError) is not None:
    return Failure(f"timeout after {_seconds(timeout_s)} s", "timeout", True)
  root = chain[-1]
  detail = _short(str(root), 200)
  return Failure(f"connection error: {type(root).__name__}" + (f": {detail}" if detail else ""), "connection",
                 True)


def _error_code(exc: openai.APIStatusError) -> str | None:
  """The OpenAI error body's ``code`` (e.g. 'model_not_found', 'insufficient_quota')."""
  code = getattr(exc, "code", None)
  if code is None and isinstance(exc.body, dict):
    code = exc.body.get("code")
  return code if isinstance(code, str) else None


def _error_param(exc: openai.APIStatusError) -> str | None:
  """The OpenAI error body's ``param``: the request field a 400 is about (e.g. 'max_tokens')."""
  param = exc.body.get("param") if isinstance(exc.body, dict) else None
  return param if isinstance(param, str) else None


def _unsupported_hint(spec: ModelSpec, param: str | None) -> str:
  """What to set in the model's pool entry so the refused parameter is no longer sent."""
  where = f"in the llm.models entry of {spec.name!r}"
  if param in ("max_tokens", "max_completion_tokens"):
    other = "max_completion_tokens" if param == "max_tokens" else "max_tokens"
    return f"set max_tokens_param={other!r} {where}"
  if param == "temperature":
    return f"set fixed_temperature=1.0 {where} (the only value OpenAI's GPT-5 family and o-series take)"
  if param is not None and param in spec.extra_body:
    return f"change or remove {param!r} in extra_body {where}"
  if param is not None:
    return f"the model does not take {param!r}"
  return "the model refuses a request parameter"


def _server_message(exc: openai.APIStatusError) -> str:
  """What the server said: the error body's message, else its text (an HTML page of a proxy, ...)."""
  body = exc.body
  if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
    return _short(body["message"], 200)
  if isinstance(body, str) and body.strip():
    return _short(body, 200)
  message = str(getattr(exc, "message", "") or "")
  return _short(message.split(" - ", 1)[1] if message.startswith("Error code:") and " - " in message else message, 200)


def _status_failure(exc: openai.APIStatusError, spec: ModelSpec, base_url: str) -> Failure:
  """The cause of an HTTP error answer."""
  status = exc.status_code
  message = _server_message(exc)
  code = _error_code(exc)
  if status == 401:
    hint = (f"check the API key in ${spec.api_key_env}" if spec.api_key_env else
            "the server wants an API key: set api_key_env for this model and export the key")
    return Failure(f"HTTP 401 unauthorized ({hint})", "unauthorized", False)
  if status == 403:
    hint = f"check the API key in ${spec.api_key_env}" if spec.api_key_env else "no API key is configured"
    return Failure(f"HTTP 403 forbidden: {message} ({hint})", "forbidden", False)
  if status == 404:
    if code == "model_not_found" or "model" in message.lower():
      return Failure(f"HTTP 404 model {spec.wire_name!r} not found on this server", "model_not_found", False)
    return Failure(f"HTTP 404 not found: {base_url}/chat/completions (check base_url; OpenAI-compatible "
                   "servers usually end in /v1)", "not_found", False)
  if status == 429:
    if code == "insufficient_quota":
      return Failure(f"HTTP 429 quota exceeded: {message} (check the account's plan and billing)", "quota", False)
    return Failure(f"HTTP 429 rate limited: {message}", "rate_limited", True, _retry_after_s(exc.response.headers))
  if status == 408 or status >= 500:
    return Failure(f"HTTP {status} server error: {message}", "server", True, _retry_after_s(exc.response.headers))
  if status == 400 and code in ("unsupported_parameter", "unsupported_value"):
    hint = _unsupported_hint(spec, _error_param(exc))
    return Failure(f"HTTP 400 {code.replace('_', ' ')}: {message} ({hint})", "unsupported", False)
  return Failure(f"HTTP {status}: {message}", "client", False)


class _LoopState:
  """Clients and semaphores bound to one event loop (asyncio objects cannot move loops)."""

  def __init__(self, loop: asyncio.AbstractEventLoop, endpoints: Sequence[_Endpoint],
               keys: Mapping[str | None, str], max_concurrency: int, timeout_s: float, transport: str):
    self.loop = loop
    self.closed = False
    self.global_limit = asyncio.Semaphore(max_concurrency)
    self.endpoint_limit = {e: asyncio.Semaphore(e.limit) for e in endpoints}
    self.clients: dict[_Endpoint, openai.AsyncOpenAI] = {}
    self._http: list[httpx2.AsyncClient] = []
    self._guard: AsyncIterator[None] | None = None
    client_class = openai.DefaultAioHttpClient if transport == "aiohttp" else httpx2.AsyncClient
    for e in endpoints:
      http = client_class(
          timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
          limits=httpx2.Limits(max_connections=e.limit, max_keepalive_connections=e.limit),
          follow_redirects=True)
      self._http.append(http)
      self.clients[e] = openai.AsyncOpenAI(api_key=keys[e.api_key_env], base_url=e.base_url, max_retries=0,
                                           timeout=timeout_s, http_client=http)

  async def _close_at_shutdown(self) -> AsyncIterator[None]:
    # Parked at its yield; the loop's shutdown_asyncgens (asyncio.run, Runner.close)
    # closes it while the loop still runs, and the clients close with it.
    try:
      yield
    finally:
      await self._close_clients()

  async def start(self) -> None:
    """Registers the shutdown guard with the running loop (call once, on self.loop)."""
    self._guard = self._close_at_shutdown()
    await self._guard.__anext__()

  async def _close_clients(self) -> None:
    if self.closed:
      return
    self.closed = True
    _OPEN_STATES.discard(self)
    for client in self.clients.values():
      try:
        await client.close()
      except Exception as e:  # pylint: disable=broad-except  # closing must go on for the other clients
        _LOG.debug("closing an HTTP client failed: %r", e)

  async def aclose(self) -> None:
    """Closes the clients; run it on self.loop."""
    if self._guard is not None:
      await self._guard.aclose()  # its finally closes the clients
    await self._close_clients()

  def abandon(self) -> None:
    """Marks the clients of a loop that was closed without shutting down as closed.

    Their sockets cannot be closed through a closed loop (the OS closes them
    with the process); this only stops aiohttp from reporting them as leaked.
    """
    self.closed = True
    _OPEN_STATES.discard(self)
    if self._guard is not None:
      closing = self._guard.aclose()
      try:
        closing.send(None)  # the finally finds closed=True and returns without awaiting
      except StopIteration:
        pass
      except RuntimeError:  # the generator never started or already finished
        closing.close()
    for http in self._http:
      session = getattr(getattr(http, "_transport", None), "client", None)
      connector = getattr(session, "connector", None)
      close = getattr(connector, "_close", None)
      if close is not None:
        try:
          close()
        except Exception:  # pylint: disable=broad-except  # best effort on a dead loop
          pass

  def close_from_outside(self, timeout_s: float = 10.0) -> None:
    """Closes the clients from a thread where self.loop is not running."""
    if self.closed:
      return
    loop = self.loop
    if loop.is_closed():
      self.abandon()
    elif loop.is_running():  # running in another thread: ask it to close them
      future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
      try:
        future.result(timeout_s)
      except Exception as e:  # pylint: disable=broad-except
        _LOG.warning("could not close the HTTP clients on a running event loop: %r", e)
    else:
      try:
        asyncio.get_running_loop()
      except RuntimeError:
        loop.run_until_complete(self.aclose())
        return
      # Another loop runs in this thread: drive the idle loop from a helper thread.
      helper = threading.Thread(target=loop.run_until_complete, args=(self.aclose(),), daemon=True)
      helper.start()
      helper.join(timeout_s)


# States not closed yet, over all backends: closed at interpreter exit at the latest.
_OPEN_STATES: set[_LoopState] = set()


@atexit.register
def _close_open_states_at_exit() -> None:
  for state in list(_OPEN_STATES):
    try:
      state.close_from_outside(timeout_s=5.0)
    except Exception as e:  # pylint: disable=broad-except  # never fail the exit
      _LOG.debug("closing HTTP clients at exit failed: %r", e)


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
    self._states: list[_LoopState] = []
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

  async def _loop_state(self) -> _LoopState:
    loop = asyncio.get_running_loop()
    with self._states_lock:
      for state in self._states:
        if state.loop is loop and not state.closed:
          return state
      # A new event loop (e.g. a second asyncio.run): clients cannot move between
      # loops, so this loop gets its own; closed ones are forgotten.
      self._states = [s for s in self._states if not s.closed]
      state = _LoopState(loop, list(self._endpoints.values()), self._keys, self.max_concurrency,
                         self.timeout_s, self.transport)
      self._states.append(state)
      _OPEN_STATES.add(state)
    await state.start()
    return state

  def _take_states(self) -> list[_LoopState]:
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
        return dataclasses.replace(outcome, cause=f"timeout after {_seconds(timeout_s)} s")
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
      failure = _connection_failure(e, host=urllib.parse.urlsplit(base_url).hostname, timeout_s=timeout,
                                    connect_timeout_s=min(10.0, timeout) if timeout_s is None else timeout)
    except openai.APIStatusError as e:
      failure = _status_failure(e, spec, base_url)
    except (openai.APIResponseValidationError, ValueError, TypeError, KeyError) as e:
      failure = Failure(f"malformed response body: {type(e).__name__}: {_short(str(e), 200)}", "malformed", True)
    except openai.OpenAIError as e:
      failure = Failure(f"{type(e).__name__}: {_short(str(e))}", "other", False)
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
