"""A multi-host program for tests/test_llm_cache_multihost.py: simulated LLM calls through the response cache.

Every process opens ``CachedBackend(backend, <workdir>/llm_cache.sqlite)`` (as train.environment does), runs its
share of ``--requests`` requests to a simulated backend, and process 0 prints one JSON line: the answers in request
order (digests), which were cache hits, and how many calls each process sent to the simulated backend.
"""

import asyncio
import hashlib
import json
import pathlib

from absl import app
from absl import flags

from launch import multihost

from hieramas_jax import distributed
from hieramas_jax.llm import cache as llm_cache
from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.llm.sim_task import ArithmeticTask

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the response cache.", required=True)
_REQUESTS = flags.DEFINE_integer("requests", 6, "Requests in the run (split over the processes).")


class CountingBackend:
  """The simulated backend, counting the calls that reach it (the paid calls of a real endpoint)."""

  def __init__(self, inner):
    self.inner, self.calls = inner, 0

  def known_models(self):
    return self.inner.known_models()

  async def complete(self, model, messages, **kwargs):
    self.calls += 1
    return await self.inner.complete(model, messages, **kwargs)


def main(argv):
  del argv
  multihost.join("llm_cache")
  task = ArithmeticTask()
  problems = task.load("test", n=_REQUESTS.value)
  backend = CountingBackend(SimulatedBackend(default_world(seed=0), task, problems))
  cached = llm_cache.CachedBackend(backend, pathlib.Path(_WORKDIR.value) / "llm_cache.sqlite")
  requests = [(i, "Qwen3-8B" if i % 2 else "Llama-3.1-8B") for i in range(len(problems))]

  def ask(share):
    async def run():
      return await asyncio.gather(*(cached.complete(model, [{"role": "user", "content": problems[i].question}],
                                                    sample_index=i % 3, temperature=0.7)
                                    for i, model in share))
    return [(hashlib.sha256(r.text.encode()).hexdigest()[:16], r.cached) for r in asyncio.run(run())]

  answers = distributed.run_shares(requests, ask, "ask")
  calls = distributed.gather_objects(backend.calls, "calls")
  cached.close()
  if distributed.is_primary():
    print(json.dumps({"count": distributed.process_count(), "texts": [t for t, _ in answers],
                      "hits": [h for _, h in answers], "calls": calls}))
  distributed.finish()


if __name__ == "__main__":
  app.run(main)
