"""Why a request to an OpenAI-compatible endpoint failed, in words (no JAX, no keys).

The openai client wraps transport errors in a few outer types; the cause a user
can act on ("connection refused", "DNS lookup failed for host X", "HTTP 401
unauthorized (check the API key in $VAR)", "HTTP 400 unsupported parameter ...
(set max_tokens_param=...)") comes from the exception chain and the error body.
Each cause is a ``Failure`` that also says whether retrying may help and how long
the server asked to wait.
"""

from __future__ import annotations

import dataclasses
import email.utils
import socket
import ssl
import time
from typing import Mapping

import aiohttp
import httpx2
import openai

from hieramas_jax.llm.pool import ModelSpec


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


def seconds_text(value: float) -> str:
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


def connection_failure(exc: BaseException, *, host: str | None, timeout_s: float,
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
    return Failure(f"TLS error: {short_text(str(tls), 200)}", "tls", False)
  if first(*_DISCONNECT_ERRORS) is not None:
    return Failure("connection closed by the server before it answered", "disconnected", True)
  # aiohttp's ConnectionTimeoutError is a connect timeout; httpx's ConnectTimeout is
  # one only without aiohttp below it (the aiohttp transport maps more to it).
  if ((_AIOHTTP_CONNECT_TIMEOUTS and first(*_AIOHTTP_CONNECT_TIMEOUTS) is not None) or
      (first(httpx2.ConnectTimeout) is not None and first(aiohttp.ClientError) is None)):
    return Failure(f"connect timeout after {seconds_text(connect_timeout_s)} s", "connect_timeout", True)
  # Before the timeouts: the aiohttp transport reports any failed connect as a timeout.
  os_error = next((e for e in reversed(chain)
                   if isinstance(e, OSError) and not isinstance(e, TimeoutError) and e.strerror), None)
  if os_error is not None:
    return Failure(f"connection error: {os_error.strerror}", "connection", True)
  if first(TimeoutError, httpx2.TimeoutException, openai.APITimeoutError) is not None:
    return Failure(f"timeout after {seconds_text(timeout_s)} s", "timeout", True)
  root = chain[-1]
  detail = short_text(str(root), 200)
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
    return short_text(body["message"], 200)
  if isinstance(body, str) and body.strip():
    return short_text(body, 200)
  message = str(getattr(exc, "message", "") or "")
  if message.startswith("Error code:") and " - " in message:  # "Error code: 404 - {...}": the part after the code
    message = message.split(" - ", 1)[1]
  return short_text(message, 200)


def status_failure(exc: openai.APIStatusError, spec: ModelSpec, base_url: str) -> Failure:
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
    return Failure(f"HTTP 429 rate limited: {message}", "rate_limited", True, retry_after_s(exc.response.headers))
  if status == 408 or status >= 500:
    return Failure(f"HTTP {status} server error: {message}", "server", True, retry_after_s(exc.response.headers))
  if status == 400 and code in ("unsupported_parameter", "unsupported_value"):
    hint = _unsupported_hint(spec, _error_param(exc))
    return Failure(f"HTTP 400 {code.replace('_', ' ')}: {message} ({hint})", "unsupported", False)
  return Failure(f"HTTP {status}: {message}", "client", False)



def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
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


def short_text(text: str, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit] + "..."
