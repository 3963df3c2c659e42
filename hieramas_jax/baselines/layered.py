"""NeuroMAS-style layered role-free network, untrained: the structure only."""

from __future__ import annotations

import asyncio
import dataclasses

from hieramas_jax.baselines import prompts
from hieramas_jax.baselines.core import (ROUND_STRIDE, MethodContext, Query, QueryResult, cycled, model_list,
                                         text_of)
from hieramas_jax.baselines.options import model_option, option, settle


@dataclasses.dataclass(frozen=True)
class NeuroMASSettings:
  """``depth`` layers of ``width`` plain LLM nodes, each reading all outputs of the layer before; one aggregator.

  ``model``: one model for every node, or one per position in a layer (cycled);
  ``aggregator_model`` (default: the first node model) reads the last layer.
  """

  model: str | tuple[str, ...] = model_option()
  depth: int = option(2, flag="neuromas_depth", help_text="NeuroMAS-style: layers.")
  width: int = option(3, flag="neuromas_width", help_text="NeuroMAS-style: nodes per layer.")
  aggregator_model: str | None = None

  def __post_init__(self):
    settle(self, tuples=["model"], positive=["depth", "width"])


def neuromas(ctx: MethodContext, settings: NeuroMASSettings) -> list[QueryResult]:
  """``depth * width + 1`` calls per query."""
  depth, width = settings.depth, settings.width
  node_models = cycled(model_list(settings.model), width)
  aggregator_model = settings.aggregator_model or node_models[0]

  async def one(q: Query) -> QueryResult:
    previous: list[tuple[str, str]] = []
    ready = 0.0
    for layer in range(depth):
      messages = prompts.layer_messages(ctx.task, q.problem, previous)
      answers = await asyncio.gather(*(
          q.call(f"Node {layer + 1}.{w + 1}", layer * width + w, "node", layer, node_models[w], messages,
                 layer * ROUND_STRIDE + w, ready) for w in range(width)))
      ready = max(end for _, end in answers)
      outputs = [(f"Node {layer + 1}.{w + 1}", r.text) for w, (r, _) in enumerate(answers) if r.ok]
      # A layer whose every node failed passes on what the layer before it said.
      previous = outputs or previous
    response, _ = await q.call("Aggregator", depth * width, "aggregator", depth, aggregator_model,
                               prompts.synthesis_messages(ctx.task, q.problem, previous), depth * ROUND_STRIDE,
                               ready)
    return q.outcome(text_of(response))

  return ctx.run_queries([*node_models, aggregator_model], one)
