"""What every baseline method shares: its context and the recorder of one query's calls.

A method returns one ``results.QueryResult`` per problem, as the executor and
HieraMAS do.

Latency of a query is its critical path: calls start as soon as their inputs
exist and take the latency the backend reports for them (``Response.latency``),
so it is the time from the first call's start to the last call's end without the
queueing that a whole batch sent at once adds.

In a multi-host run (``hieramas_jax.distributed``) every process runs the same
method: ``MethodContext.run_queries`` and ``run_plans`` make this process's
calls for its contiguous share of the queries only, on its own backend, and
every process gets every query's result back, in the order of one process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

from hieramas_jax import distributed, executor
from hieramas_jax.llm.base import Backend, Message, Response, check_models
from hieramas_jax.results import QueryResult
from hieramas_jax.tasks.base import Problem, Task

# Sample indices: call c of round r uses r * ROUND_STRIDE + c, so calls that
# share a prompt and model (parallel agents of round 0) get distinct samples.
ROUND_STRIDE = 1000


@dataclasses.dataclass
class Query(executor.QueryCalls):
  """The calls of one query (``executor.QueryCalls``) and their virtual schedule, for the critical path."""

  finish: float = 0.0  # virtual end of the latest call

  async def call(self, node: str, node_index: int, kind: str, position: int, model: str,
                 messages: Sequence[Message], sample_index: int, ready: float) -> tuple[Response, float]:
    """One call that may start at virtual time ``ready``; returns the response and its virtual end."""
    response = await self.complete(model, messages, sample_index=sample_index, role=node, role_index=node_index,
                                   kind=kind, position=position, where=node)
    virtual_end = ready + max(0.0, float(response.latency))
    self.finish = max(self.finish, virtual_end)
    return response, virtual_end

  def outcome(self, final_text: str | None, **details: Any) -> QueryResult:
    """The query's result, its latency the virtual schedule's end; ``details``: the method's own facts."""
    return self.result(final_text, self.finish, details=details)


QueryFn = Callable[[Query], Awaitable[QueryResult]]


@dataclasses.dataclass(frozen=True)
class MethodContext:
  """What a method runs on.

  Attributes:
    problems: the queries, in order; a method returns one QueryResult per problem.
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

  def run_queries(self, models: Sequence[str], one: QueryFn) -> list[QueryResult]:
    """Runs ``one`` on every problem concurrently (the executor's loop); checks the models first.

    In a multi-host run each process runs its share of the problems and every
    process returns every result (``distributed.run_shares``).
    """
    check_models(self.backend, list(models))
    indexed = list(enumerate(self.problems))  # the global index: each Query is numbered as in one process
    return distributed.run_shares(indexed, lambda share: executor.run_sync(self._gather(one, share)),
                                  "baselines.run_queries")

  async def _gather(self, one: QueryFn, indexed: Sequence[tuple[int, Problem]]) -> list[QueryResult]:
    t0 = time.perf_counter()
    params = dict(self.params)
    return list(await asyncio.gather(*(one(Query(i, p, self.backend, params, t0)) for i, p in indexed)))

  def run_plans(self, plans: Sequence[executor.Plan]) -> list[QueryResult]:
    """Executes plans with the executor on this context's backend, task and parameters.

    In a multi-host run each process executes its share of the plans and every
    process returns every result. The plans must be the same on every process.
    """
    return distributed.run_shares(
        list(plans), lambda share: executor.execute(share, self.backend, self.task, params=self.params),
        "baselines.run_plans")

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
