"""A multi-host program for tests/test_evaluate_multihost.py: hieramas_jax.evaluation.evaluate, every LLM call counted.

Each process evaluates --methods on the first --limit test problems of the run in
--workdir (the smoke config with the hashing encoder) through a backend that
counts the calls this process makes, and prints one JSON line: its index, its
call count and the report's rows it got back. ``--dead_endpoint_on=<process>``
makes every model's preflight probe fail on that process only; each process then
prints the error it raised instead and exits with status 1.
"""

import json
import pathlib

from absl import app
from absl import flags

from launch import multihost

from hieramas_jax import config as base_config
from hieramas_jax import distributed, evaluation, executor
from hieramas_jax.llm import openai_errors
from hieramas_jax.train import environment

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run.", required=True)
_OUT = flags.DEFINE_string("out", None, "Where process 0 writes the report.", required=True)
_METHODS = flags.DEFINE_string("methods", "single", "Comma list of methods.")
_LIMIT = flags.DEFINE_integer("limit", 5, "Test problems evaluated.")
_DEAD_ON = flags.DEFINE_integer("dead_endpoint_on", -1, "Process whose endpoints fail the preflight probe.")


class CountingBackend:
  """Passes every call to ``backend`` and counts them (``backend``: the simulator finds it to register problems)."""

  def __init__(self, backend):
    self.backend, self.calls = backend, 0

  def known_models(self):
    return self.backend.known_models()

  async def complete(self, model, messages, **kwargs):
    self.calls += 1
    return await self.backend.complete(model, messages, **kwargs)

  async def probe(self, model, *, timeout_s):
    del model, timeout_s
    if distributed.process_index() == _DEAD_ON.value:
      return openai_errors.Failure(cause="connection refused", kind="refused", retryable=False)
    return None

  def base_url(self, model):
    return f"http://host-{distributed.process_index()}:8000/v1 ({model})"


def main(argv):
  del argv
  multihost.join("evaluate_calls")
  config = base_config.base_config("math", "smoke")
  config.encoder.kind = "hashing"
  task = environment.load_task(config)
  specs = environment.validate_config(config, num_roles=len(task.roles))
  problems = [p for split in environment.load_splits(config, task).values() for p in split]
  inner = environment.make_backend(config, specs, task, problems, pathlib.Path(_WORKDIR.value))
  backend = CountingBackend(inner)
  try:
    results = evaluation.evaluate(config, _WORKDIR.value, _OUT.value, methods=_METHODS.value, limit=_LIMIT.value,
                                  backend=backend, topology_queries=0, log=lambda s: None)
  except evaluation.EXPECTED_FAILURES as e:
    print(json.dumps({"process": distributed.process_index(), "error": f"{type(e).__name__}: {e}"}), flush=True)
    distributed.fail_fast("")  # status 1; the other processes raised the same error and leave on their own
  finally:
    executor.close_backend(inner)
  rows = [{"method": r["method"], "calls": r["calls"], "queries": r["queries"], "accuracy": r["accuracy"],
           "cost_usd": r["cost_usd"]} for r in results["rows"]]
  print(json.dumps({"process": distributed.process_index(), "calls": backend.calls, "rows": rows}), flush=True)
  distributed.finish()


if __name__ == "__main__":
  app.run(main)
