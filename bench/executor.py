"""Executor throughput over the real openai client against the simulator server.

Starts ``launch.sim_server`` in a subprocess with a fixed latency, runs a batch of
queries (each: 3 roles x (2 proposers + 1 synthesizer) + the decision node, on a
mix of chain / fan-in / parallel DAGs) through ``OpenAIBackend`` with a global
concurrency limit, and prints one JSON line:

  wall_s          wall time of the batch
  lower_bound_s   max(critical path, calls x latency / concurrency)
  ratio           wall_s / lower_bound_s (1.0 is perfect)
  client_cpu_s_per_1000_calls   CPU seconds of this (client) process per 1000 calls

  python bench/executor.py [--queries 200] [--latency_s 0.5] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from hieramas_jax import executor
from hieramas_jax.llm.openai_backend import OpenAIBackend, RetryPolicy
from hieramas_jax.llm.pool import paper_pool
from hieramas_jax.llm.sim_task import ArithmeticTask

# Role DAGs of the batch (adjacency[i][j] = 1: role i feeds role j) and their
# depth in roles.
_DAGS = (
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], 3),  # chain
    ([[0, 0, 1], [0, 0, 1], [0, 0, 0]], 2),  # two roles feed a third
    ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], 1),  # independent roles
)


def _start_server(latency_s: float, num_problems: int) -> tuple[subprocess.Popen, str]:
  cmd = [sys.executable, "-m", "launch.sim_server", "--port", "0", "--latency_s", str(latency_s),
         "--load_kwargs", json.dumps({"n": num_problems})]
  proc = subprocess.Popen(cmd, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    if "listening on" in line:
      return proc, line.strip().rsplit(" ", 1)[-1]
  proc.kill()
  raise RuntimeError(f"the simulator server did not start: {proc.stderr.read()[-2000:]}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--queries", type=int, default=200)
  parser.add_argument("--latency_s", type=float, default=0.5)
  parser.add_argument("--concurrency", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  task = ArithmeticTask()
  problems = task.load("test", n=args.queries)
  proc, base_url = _start_server(args.latency_s, args.queries)
  try:
    pool = paper_pool(base_url=base_url, max_concurrency=args.concurrency)
    backend = OpenAIBackend(pool, max_concurrency=args.concurrency, timeout_s=30.0,
                            retry=RetryPolicy(max_retries=3), seed_from_sample_index=True)
    rng = random.Random(args.seed)
    names = [m.name for m in pool]
    plans, depths = [], []
    for i, problem in enumerate(problems):
      adjacency, depth = _DAGS[i % len(_DAGS)]
      assignment = [[rng.choice(names) for _ in range(3)] for _ in task.roles]
      plans.append(executor.Plan(problem, task.roles, assignment, adjacency, rng.choice(names)))
      depths.append(depth)

    cpu0, t0 = time.process_time(), time.perf_counter()
    results = executor.execute(plans, backend, task)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    executor.run_sync(backend.aclose())
  finally:
    proc.terminate()
    proc.communicate(timeout=10)

  calls = sum(len(r.calls) for r in results)
  errors = sum(len(r.errors) for r in results)
  # Each role is a proposer round then a synthesizer call; the decision comes last.
  critical_path = (2 * max(depths) + 1) * args.latency_s
  throughput_bound = calls * args.latency_s / args.concurrency
  lower_bound = max(critical_path, throughput_bound)
  print(json.dumps({
      "bench": "executor",
      "wall_s": round(wall, 3),
      "lower_bound_s": round(lower_bound, 3),
      "ratio": round(wall / lower_bound, 4),
      "calls": calls,
      "queries": len(plans),
      "errors": errors,
      "latency_s": args.latency_s,
      "concurrency": args.concurrency,
      "critical_path_s": round(critical_path, 3),
      "throughput_bound_s": round(throughput_bound, 3),
      "client_cpu_s": round(cpu, 3),
      "client_cpu_s_per_1000_calls": round(1000 * cpu / max(calls, 1), 3),
      "total_cost_usd": round(executor.total_cost(results), 6),
      "python": sys.version.split()[0],
      "cpu_count": os.cpu_count(),
  }))


if __name__ == "__main__":
  main()
