"""One model alone: a single call (plain or step by step) and self-consistency (majority over samples)."""

from __future__ import annotations

import asyncio
import dataclasses

from hieramas_jax.baselines import prompts
from hieramas_jax.baselines.core import MethodContext, Query, QueryResult, text_of
from hieramas_jax.baselines.options import model_option, option, settle


@dataclasses.dataclass(frozen=True)
class SingleSettings:
  """One call of ``model`` per problem; ``chain_of_thought``: asking it to reason step by step."""

  model: str = model_option("fixed_model")
  chain_of_thought: bool = False


def single(ctx: MethodContext, settings: SingleSettings) -> list[QueryResult]:
  """1 call per query."""
  kind = "cot" if settings.chain_of_thought else "single"
  build = prompts.cot_messages if settings.chain_of_thought else prompts.plain_messages

  async def one(q: Query) -> QueryResult:
    response, _ = await q.call("LLM", 0, kind, 0, settings.model, build(ctx.task, q.problem), 0, 0.0)
    return q.outcome(text_of(response))

  return ctx.run_queries([settings.model], one)


@dataclasses.dataclass(frozen=True)
class SelfConsistencySettings:
  """``samples`` independent plain calls of ``model`` (distinct sample indices), majority over their answers."""

  model: str = model_option()
  samples: int = option(5, flag="sc_samples", help_text="Self-consistency: samples per query.")

  def __post_init__(self):
    settle(self, positive=["samples"])


def self_consistency(ctx: MethodContext, settings: SelfConsistencySettings) -> list[QueryResult]:
  """``samples`` calls per query."""
  model, samples = settings.model, settings.samples

  async def one(q: Query) -> QueryResult:
    messages = prompts.plain_messages(ctx.task, q.problem)
    answers = await asyncio.gather(*(q.call(f"Sample {s + 1}", s, "sample", s, model, messages, s, 0.0)
                                     for s in range(samples)))
    texts = [text_of(r) for r, _ in answers]
    chosen, votes = prompts.majority_vote(ctx.task, texts)
    return q.outcome(None if chosen is None else texts[chosen], votes=votes)

  return ctx.run_queries([model], one)
