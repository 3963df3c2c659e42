"""MLPO-style leader and peers ("How to Train a Leader"), untrained: the structure only."""

from __future__ import annotations

import asyncio
import dataclasses

from hieramas_jax.baselines import prompts
from hieramas_jax.baselines.core import (ROUND_STRIDE, MethodContext, Query, QueryResult, cycled, model_list,
                                         text_of)
from hieramas_jax.baselines.options import model_option, option, settle


@dataclasses.dataclass(frozen=True)
class MLPOSettings:
  """``peers`` answer, the leader synthesizes; for ``rounds - 1`` more rounds the peers refine on its output.

  ``peer_models`` (default: the leader's) are cycled over the peers. The
  leader's last output is final.
  """

  leader_model: str = model_option()
  peers: int = option(3, flag="mlpo_peers", help_text="MLPO-style: peers besides the leader.")
  rounds: int = option(2, flag="mlpo_rounds", help_text="MLPO-style: rounds of peers answering and the leader "
                       "synthesizing.")
  peer_models: str | tuple[str, ...] | None = None

  def __post_init__(self):
    settle(self, tuples=["peer_models"], positive=["peers", "rounds"])


def mlpo(ctx: MethodContext, settings: MLPOSettings) -> list[QueryResult]:
  """``rounds * (peers + 1)`` calls per query."""
  leader_model, peers, rounds = settings.leader_model, settings.peers, settings.rounds
  models = cycled(model_list(settings.peer_models or leader_model), peers)

  async def one(q: Query) -> QueryResult:
    own: list[str | None] = [None] * peers
    leader: str | None = None
    ready = 0.0
    final: str | None = None
    for r in range(rounds):
      calls = []
      for k in range(peers):
        messages = (prompts.plain_messages(ctx.task, q.problem) if r == 0 else
                    prompts.refine_messages(ctx.task, q.problem, own[k], leader))
        calls.append(q.call(f"Peer {k + 1}", k, "peer", r, models[k], messages, r * ROUND_STRIDE + k, ready))
      answers = await asyncio.gather(*calls)
      for k, (response, _) in enumerate(answers):
        if response.ok:
          own[k] = response.text
      ready = max(end for _, end in answers)
      candidates = [(f"Peer {k + 1}", own[k]) for k in range(peers) if own[k] is not None]
      response, ready = await q.call("Leader", peers, "leader", r, leader_model,
                                     prompts.synthesis_messages(ctx.task, q.problem, candidates),
                                     r * ROUND_STRIDE + peers, ready)
      final = text_of(response)  # the leader's output of the last round is final, even when it failed
      if response.ok:
        leader = response.text
    return q.outcome(final)

  return ctx.run_queries([leader_model, *models], one)
