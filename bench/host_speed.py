"""Host-side speed: the simulated pool in process, and the synthetic task's problem generator.

Prints one JSON line:

  sim_calls_per_s        simulated LLM calls per second through the executor (400 MATH-style queries,
                         3 roles x (2 proposers + 1 synthesizer) + the decision node, a chain DAG; median of repeats)
  synthetic_problems_per_s   problems generated per second by tasks/synthetic (4000 train + 1000 test)

These were wall-clock asserts in the test suite (2000 calls/s, 5000 problems in 1 s); on a loaded machine they
failed without a defect, so the figures live here.

  python bench/host_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from hieramas_jax import executor  # noqa: E402
from hieramas_jax.executor import Plan  # noqa: E402
from hieramas_jax.llm.sim import SimulatedBackend, default_world  # noqa: E402
from hieramas_jax.llm.sim_task import ArithmeticTask  # noqa: E402
from hieramas_jax.tasks.synthetic import SyntheticTask  # noqa: E402

CHAIN = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]


def sim_calls_per_s(repeats: int) -> float:
  task = ArithmeticTask()
  problems = task.load("speed", n=400)
  backend = SimulatedBackend(default_world(), task, problems)
  plans = [Plan(p, task.roles, [["Qwen3-8B", "GPT-4o-mini", "GPT-5-nano"]] * 3, CHAIN, "GPT-5-mini")
           for p in problems]
  executor.execute(plans[:20], backend, task)  # warm caches
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    results = executor.execute(plans, backend, task)
    rates.append(sum(len(r.calls) for r in results) / (time.perf_counter() - start))
  return statistics.median(rates)


def synthetic_problems_per_s(repeats: int) -> float:
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    SyntheticTask().load("train", n=4000, seed=11)
    SyntheticTask().load("test", n=1000, seed=11)
    rates.append(5000 / (time.perf_counter() - start))
  return statistics.median(rates)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(json.dumps({"bench": "host_speed", "sim_calls_per_s": round(sim_calls_per_s(args.repeats)),
                    "synthetic_problems_per_s": round(synthetic_problems_per_s(args.repeats))}))


if __name__ == "__main__":
  main()
