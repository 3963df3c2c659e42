"""Small cached ``score_pool`` calls in the C kernel when a thread is late: quiet, after idleness, beside busy work.

Prints one JSON line. For B=1 and B=8 queries against K=50 graphs (the bench's
model: 8 roles, query dim 1024, hidden 64), single calls are timed one by one
(``time.perf_counter`` around each) in three settings:

- ``quiet``: back to back (the kernel's workers spin between calls);
- ``after_2ms_idle``: each call after 2 ms of sleep (the workers asleep, as
  when queries come one at a time between LLM calls);
- ``busy_neighbour``: back to back while ``--busy`` processes spin on the CPUs
  (default: one). On a 2-core machine one of the kernel's two threads then
  shares its core, so it runs late or at part speed.

Per setting: the median, mean, 90th and 99th percentile call time (us), over
``--rounds`` rounds of ``--calls`` calls. Percentiles show what medians hide: a
kernel that waits for a late worker's whole share is slow in the tail (or, next
to a busy process, in the median).

    python bench/native_pool_contention.py [--calls 3000 --rounds 5 --busy 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time

import timing  # bench/timing.py (the script's own folder is on sys.path)


def _spin(stop) -> None:
  while not stop.is_set():
    pass


def _summary(np, times: list[float]) -> dict:
  us = 1e6 * np.asarray(times)
  return {"median": round(float(np.median(us)), 1), "mean": round(float(us.mean()), 1),
          "p90": round(float(np.percentile(us, 90)), 1), "p99": round(float(np.percentile(us, 99)), 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--calls", type=int, default=3000, help="calls per round (after idle: a tenth as many)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--busy", type=int, default=1, help="spinning processes beside the busy_neighbour setting")
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from hieramas_jax import graphs  # pylint: disable=g-import-not-at-top
  from hieramas_jax.models import gcn, native_pool  # pylint: disable=g-import-not-at-top

  model = gcn.GraphClassifier(8, 1024, role_dim=32, hidden_dim=64, num_layers=2, mlp_dim=64, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  pool = jnp.asarray(graphs.dag_pool(0, 8, 50, (0.2, 0.8)), jnp.float32)
  queries = jax.random.normal(jax.random.key(2), (8, 1024), jnp.float32)
  scorer = gcn.PoolScorer(graphdef, native=True)
  reason = scorer.native_unavailable_reason(scorer.prepared_pool(params, pool, None, 1)[0])
  if reason is not None:
    raise SystemExit(f"nothing to measure: the C kernel is unavailable here ({reason})")
  fns = {f"B{b}_K50": (lambda q=queries[:b]: scorer(params, q, pool)) for b in (1, 8)}
  for fn in fns.values():
    for _ in range(200):
      fn()

  samples = {(setting, name): [] for setting in ("quiet", "after_2ms_idle", "busy_neighbour") for name in fns}
  context = multiprocessing.get_context("spawn")
  for _ in range(args.rounds):  # the settings in turns, so each sees the same phases of a noisy machine
    for name, fn in fns.items():
      samples[("quiet", name)] += timing.single_call_times(fn, args.calls, 0.0)
      samples[("after_2ms_idle", name)] += timing.single_call_times(fn, max(1, args.calls // 10), 0.002)
    stop = context.Event()
    spinners = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for spinner in spinners:
      spinner.start()
    time.sleep(0.2)  # the spinners running
    try:
      for name, fn in fns.items():
        samples[("busy_neighbour", name)] += timing.single_call_times(fn, args.calls, 0.0)
    finally:
      stop.set()
      for spinner in spinners:
        spinner.join()

  result = {"bench": "native_pool_contention", "threads": native_pool.threads(), "cpus": os.cpu_count(),
            "busy_processes": args.busy, "calls_per_round": args.calls, "rounds": args.rounds}
  for (setting, name), times in samples.items():
    result.setdefault(setting, {})[name] = _summary(np, times)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
