"""The one async interface every LLM backend implements.

A backend answers ``complete(model, messages, sample_index=..., **params)`` with a
:class:`Response` that carries its own text, token usage, cost in USD, latency
and error. Cost travels with each response so that concurrent queries never need
a shared counter. A call that fails is a response with ``error`` set and
``text=None``: callers must not grade it as a wrong answer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Iterable, Mapping, Protocol, Sequence, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


class ConfigError(ValueError):
  """A model pool or backend configuration that cannot work; raised before any call."""


class UnknownModelError(ConfigError):
  """A plan names a model that the backend does not serve."""


@dataclasses.dataclass(frozen=True)
class Usage:
  """Token counts of one call."""

  prompt_tokens: int = 0
  completion_tokens: int = 0

  @property
  def total_tokens(self) -> int:
    return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True)
class Response:
  """The outcome of one completion call.

  Attributes:
    model: the pool name of the model that was asked (not the wire name).
    text: the completion, or None when the call failed.
    usage: token counts (zero when the call failed before a usage was known).
    cost: USD of this call from the model's price table; a cached response keeps
      the cost of the call that produced it so that rewards are reproducible.
    latency: seconds the answering request took (for the in-process simulator:
      the simulated latency of the model, slept or not).
    error: None on success, else a short description (never holding a key).
    cached: whether the response came from the response cache (no call made).
    attempts: how many requests were sent (retries included; 0 when cached).
    finish_reason: why generation stopped, as the API says ("stop", "length",
      "content_filter", ...); None when unknown. "length" means the text was cut
      at max_tokens.
  """

  model: str
  text: str | None
  usage: Usage = Usage()
  cost: float = 0.0
  latency: float = 0.0
  error: str | None = None
  cached: bool = False
  attempts: int = 1
  finish_reason: str | None = None

  @property
  def ok(self) -> bool:
    return self.error is None and self.text is not None

  def to_json(self) -> dict[str, Any]:
    return {
        "model": self.model,
        "text": self.text,
        "prompt_tokens": self.usage.prompt_tokens,
        "completion_tokens": self.usage.completion_tokens,
        "cost": self.cost,
        "latency": self.latency,
        "error": self.error,
        "finish_reason": self.finish_reason,
    }

  @classmethod
  def from_json(cls, data: Mapping[str, Any], *, cached: bool = False) -> "Response":
    return cls(
        model=data["model"],
        text=data["text"],
        usage=Usage(int(data["prompt_tokens"]), int(data["completion_tokens"])),
        cost=float(data["cost"]),
        latency=float(data["latency"]),
        error=data.get("error"),
        cached=cached,
        attempts=0 if cached else 1,
        finish_reason=data.get("finish_reason"),  # absent in responses cached before it was recorded
    )


def error_response(model: str, error: str, *, latency: float = 0.0, attempts: int = 1) -> Response:
  """A failed call: no text, no cost."""
  return Response(model=model, text=None, error=error, latency=latency, attempts=attempts)


@runtime_checkable
class Backend(Protocol):
  """What the executor needs from an LLM backend."""

  def known_models(self) -> Collection[str]:
    """Names of the models this backend serves (pool names)."""
    ...

  async def complete(
      self, model: str, messages: Sequence[Message], *, sample_index: int = 0, **params: Any
  ) -> Response:
    """One chat completion; never raises for call failures (returns an error response).

    ``sample_index`` tells apart repeated samples of the same prompt (it is part of
    the cache key); ``params`` are generation parameters (temperature, max_tokens, ...).
    """
    ...


def check_models(backend: Backend, names: Iterable[str | None]) -> None:
  """Raises UnknownModelError naming every model the backend does not serve."""
  known = set(backend.known_models())
  unknown = sorted({n for n in names if n is not None and n not in known})
  if unknown:
    raise UnknownModelError(
        f"unknown model(s) {', '.join(map(repr, unknown))}; this backend serves: "
        f"{', '.join(sorted(known))}. Fix the model names in the plan or add them to the pool config")
