"""What every baseline method shares: its result type, its context, and the recorder of one query's calls.

Latency of a query is its critical path: calls start as soon as their inputs
exist and take the latency the backend reports for them (``Response.latency``),
so it is the time from the first call's start to the last call's end without the
queueing that a whole batch sent at once adds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

from hieramas_jax import executor
from hieramas_jax.executor import CallRecord
from hieramas_jax.llm.base import Backend, Message, Response, check_models
from hieramas_jax.tasks.base import Problem, Task

# Sample indices: call c of round r uses r * ROUND_STRIDE + c, so calls that
# share a prompt and model (parallel agents of round 0) get distinct samples.
ROUND_STRIDE = 1000


@dataclasses.dataclass
class QueryOutcome:
  """One problem answered by one method.

  Attributes:
    uid: the problem's uid.
    final_text: the method's final answer text; None when it could give none
      (its last call failed).
    calls: every LLM call made for this query.
    latency_s: critical path in seconds (see the module docstring).
    errors: one line per failed call; any makes the query ``failed``: not
      gradable, never "wrong" (a failed sample changes a majority, a failed
      proposer what the synthesizer reads).
    details: method-specific facts (e.g. the votes of a majority).
  """

  uid: str
  final_text: str | None
  calls: list[CallRecord]
  latency_s: float
  errors: list[str] = dataclasses.field(default_factory=list)
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def failed(self) -> bool:
    """Any call failed, or no final answer: an error record, excluded from accuracy."""
    return bool(self.errors) or self.final_text is None

  @property
  def truncated(self) -> int:
    """Replies of this query cut at max_tokens (finish_reason 'length')."""
    return sum(c.truncated for c in self.calls)

  @property
  def cost(self) -> float:
    return math.fsum(c.cost for c in self.calls)

  @property
  def prompt_tokens(self) -> int:
    return sum(c.prompt_tokens for c in self.calls)

  @property
  def completion_tokens(self) -> int:
    return sum(c.completion_tokens for c in self.calls)

  @property
  def num_calls(self) -> int:
    return len(self.calls)


class Query:
  """The calls of one query: records them and keeps the virtual schedule for its critical path."""

  def __init__(self, index: int, problem: Problem, backend: Backend, params: Mapping[str, Any], t0: float):
    self.index = index
    self.problem = problem
    self.backend = backend
    self.params = params
    self.t0 = t0
    self.calls: list[CallRecord] = []
    self.errors: list[str] = []
    self.finish = 0.0  # virtual end of the latest call

  async def call(self, node: str, node_index: int, kind: str, position: int, model: str,
                 messages: Sequence[Message], sample_index: int, ready: float) -> tuple[Response, float]:
    """One call that may start at virtual time ``ready``; returns the response and its virtual end."""
    start = time.perf_counter() - self.t0
    response = await self.backend.complete(model, messages, sample_index=sample_index, **self.params)
    end = time.perf_counter() - self.t0
    self.calls.append(CallRecord(
        query_uid=self.problem.uid, query_index=self.index, role=node, role_index=node_index, kind=kind,
        position=position, model=model, prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens, cost=response.cost, start=start, end=end,
        latency=response.latency, error=response.error, cached=response.cached, attempts=response.attempts,
        finish_reason=response.finish_reason))
    if not response.ok:
      self.errors.append(f"{node} ({model}): {response.error or 'no text'}")
    virtual_end = ready + max(0.0, float(response.latency))
    self.finish = max(self.finish, virtual_end)
    return response, virtual_end

  def outcome(self, final_text: str | None, **details: Any) -> QueryOutcome:
    self.calls.sort(key=lambda c: (c.start, c.end))
    return QueryOutcome(uid=self.problem.uid, final_text=final_text, calls=self.calls, latency_s=self.finish,
                        errors=self.errors, details=details)


QueryFn = Callable[[Query], Awaitable[QueryOutcome]]


@dataclasses.dataclass(frozen=True)
class MethodContext:
  """What a method runs on.

  Attributes:
    problems: the queries, in order; a method returns one outcome per problem.
    backend: the LLM backend every call goes to.
    task: grader, prompts and roles.
    params: generation parameters of every call (those HieraMAS runs with).
    trained: a ``topologies.TrainedSystem`` (a loaded HieraMAS) for the methods
      that use its selector or classifier; None elsewhere.
  """

  problems: Sequence[Problem]
  backend: Backend
  task: Task
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  trained: Any = None

  def run_queries(self, models: Sequence[str], one: QueryFn) -> list[QueryOutcome]:
    """Runs ``one`` on every problem concurrently (the executor's loop); checks the models first."""
    check_models(self.backend, list(models))
    return executor.run_sync(self._gather(one))

  async def _gather(self, one: QueryFn) -> list[QueryOutcome]:
    t0 = time.perf_counter()
    params = dict(self.params)
    return list(await asyncio.gather(*(one(Query(i, p, self.backend, params, t0))
                                       for i, p in enumerate(self.problems))))

  def require_trained(self, method: str) -> Any:
    """The trained system, or an error saying the method needs one."""
    if self.trained is None:
      raise ValueError(f"method {method!r} uses a trained HieraMAS's selector or classifier; run it through "
                       "hieramas_jax.evaluation.evaluate (or give MethodContext a topologies.TrainedSystem)")
    return self.trained


def text_of(response: Response) -> str | None:
  """The response's text, None when the call failed."""
  return response.text if response.ok else None


def model_list(models: str | Sequence[str]) -> tuple[str, ...]:
  """One model name or several, as a tuple."""
  return (models,) if isinstance(models, str) else tuple(models)


def cycled(models: Sequence[str], count: int) -> list[str]:
  """``count`` models taken in turn from ``models``."""
  return [models[i % len(models)] for i in range(count)]
