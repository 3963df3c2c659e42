"""Agents of one model family talking in one direction: multi-agent debate and a propose-and-synthesize mixture."""

from __future__ import annotations

import asyncio
import dataclasses

from hieramas_jax.baselines import prompts
from hieramas_jax.baselines.core import (ROUND_STRIDE, MethodContext, Query, QueryResult, cycled, model_list,
                                         text_of)
from hieramas_jax.baselines.options import model_option, option, settle


@dataclasses.dataclass(frozen=True)
class DebateSettings:
  """``agents`` answer, then for ``rounds - 1`` more rounds each reads the others' previous answers and its own.

  ``model``: one model for every agent, or one per agent (cycled). Majority over
  the last answers.
  """

  model: str | tuple[str, ...] = model_option()
  agents: int = option(3, flag="debate_agents", help_text="Debate: agents.")
  rounds: int = option(2, flag="debate_rounds", help_text="Debate: rounds (the first is independent answers).")

  def __post_init__(self):
    settle(self, tuples=["model"], positive=["agents", "rounds"])


def debate(ctx: MethodContext, settings: DebateSettings) -> list[QueryResult]:
  """``agents * rounds`` calls per query."""
  agents, rounds = settings.agents, settings.rounds
  agent_models = cycled(model_list(settings.model), agents)

  async def one(q: Query) -> QueryResult:
    current: list[str | None] = [None] * agents  # each agent's latest answer (kept when a call fails)
    ready = 0.0
    for r in range(rounds):
      calls = []
      for a in range(agents):
        if r == 0:
          messages = prompts.plain_messages(ctx.task, q.problem)
        else:
          others = [(f"Agent {b + 1}", current[b]) for b in range(agents) if b != a and current[b] is not None]
          messages = prompts.debate_messages(ctx.task, q.problem, current[a], others)
        calls.append(q.call(f"Agent {a + 1}", a, "debate", r, agent_models[a], messages,
                            r * ROUND_STRIDE + a, ready))
      answers = await asyncio.gather(*calls)
      # Every agent of the next round waits for all answers of this one.
      ready = max(end for _, end in answers)
      for a, (response, _) in enumerate(answers):
        if response.ok:
          current[a] = response.text
    chosen, votes = prompts.majority_vote(ctx.task, current)
    return q.outcome(None if chosen is None else current[chosen], votes=votes)

  return ctx.run_queries(agent_models, one)


@dataclasses.dataclass(frozen=True)
class MixtureSettings:
  """One propose-and-synthesize layer: ``proposers`` calls of ``model``, one synthesizer reads them."""

  model: str = model_option()
  proposers: int = option(3, flag="mixture_proposers", help_text="Mixture: proposers before the synthesizer.")
  synthesizer_model: str | None = None  # None: ``model``

  def __post_init__(self):
    settle(self, positive=["proposers"])


def mixture(ctx: MethodContext, settings: MixtureSettings) -> list[QueryResult]:
  """``proposers + 1`` calls per query."""
  model, proposers = settings.model, settings.proposers
  synthesizer_model = settings.synthesizer_model or model

  async def one(q: Query) -> QueryResult:
    messages = prompts.plain_messages(ctx.task, q.problem)
    answers = await asyncio.gather(*(q.call(f"Proposer {p + 1}", p, "proposer", p, model, messages, p, 0.0)
                                     for p in range(proposers)))
    proposals = [(f"Candidate {i + 1}", r.text) for i, (r, _) in enumerate(answers) if r.ok]
    ready = max(end for _, end in answers)
    response, _ = await q.call("Synthesizer", proposers, "synthesizer", proposers, synthesizer_model,
                               prompts.synthesis_messages(ctx.task, q.problem, proposals), proposers, ready)
    return q.outcome(text_of(response))

  return ctx.run_queries([model, synthesizer_model], one)
