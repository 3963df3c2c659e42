"""Throughput of the sharded graph scorer (system.ShardedGraphScorer) on 1 and on all devices.

Prints one JSON line. Sizes: B=64 queries x K=200 candidate DAGs x N=8 roles, query
embeddings of size 384 (MiniLM), a GraphClassifier with random parameters. In one
process it times the scorer on the first device and on every local device, checks
that the two give bit-identical scores, and times the unsharded ``gcn.score_pool``
as a reference. A CPU-only process with one device re-runs itself with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (8 CPU devices sharing the
same cores: that shows the sharding's overhead, not a speed-up).

    python bench/score_graphs.py [--batch 64 --pool 200 --roles 8 --query_dim 384 --devices 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import timing  # bench/timing.py (the script's own folder is on sys.path)

_FORCED = "--xla_force_host_platform_device_count"


def _respawn(devices: int) -> None:
  """Re-runs this script with ``devices`` host devices and forwards its JSON line."""
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {_FORCED}={devices}".strip())
  out = subprocess.run([sys.executable, *sys.argv, "--no_respawn"], env=env, capture_output=True, text=True,
                       check=False)
  if out.returncode != 0:
    sys.exit(f"bench subprocess with {devices} devices failed:\n{out.stderr[-3000:]}")
  print(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--pool", type=int, default=200)
  parser.add_argument("--roles", type=int, default=8)
  parser.add_argument("--query_dim", type=int, default=384)
  parser.add_argument("--devices", type=int, default=8, help="host devices to force when only one CPU exists")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--no_respawn", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  if not args.no_respawn and jax.device_count() == 1 and jax.devices()[0].platform == "cpu" and args.devices > 1:
    _respawn(args.devices)
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from hieramas_jax import graphs, system  # pylint: disable=g-import-not-at-top
  from hieramas_jax.models import gcn  # pylint: disable=g-import-not-at-top

  b, k, n = args.batch, args.pool, args.roles
  model = gcn.GraphClassifier(n, args.query_dim, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  query_emb = np.random.default_rng(1).normal(size=(b, args.query_dim)).astype(np.float32)
  pool = graphs.dag_pool(0, n, k, (0.2, 0.8))
  devices = jax.local_devices()

  rates, scores = {}, {}
  for count in sorted({1, len(devices)}):
    scorer = system.ShardedGraphScorer(graphdef, params, impl="dense", devices=devices[:count])
    scores[count] = scorer(query_emb, pool)
    rates[count] = b * k / timing.best_time(lambda s=scorer: s(query_emb, pool), args.repeats)
  reference = jax.jit(lambda q, a: gcn.score_pool(graphdef, params, q, a, impl="dense"))
  q_dev, pool_dev = jax.device_put(query_emb), jax.device_put(pool.astype(np.float32))
  plain_rate = b * k / timing.best_time(lambda: reference(q_dev, pool_dev).block_until_ready(), args.repeats)
  plain = np.asarray(reference(q_dev, pool_dev))
  many = len(devices)
  scorer = system.ShardedGraphScorer(graphdef, params, devices=devices)
  print(json.dumps({
      "bench": "score_graphs",
      "platform": devices[0].platform,
      "batch": b, "pool": k, "roles": n, "query_dim": args.query_dim,
      "devices": many,
      "block_graphs_per_device": scorer.block_size(k, b),
      "padded_pool": -(-k // (scorer.block_size(k, b) * many)) * scorer.block_size(k, b) * many,
      "scores_per_s_1_device": round(rates[1]),
      "scores_per_s_all_devices": round(rates[many]),
      "scores_per_s_unsharded_score_pool": round(plain_rate),
      "identical_1_vs_all_devices": bool(np.array_equal(scores[1], scores[many])),
      "max_abs_diff_1_vs_all_devices": float(np.abs(scores[1] - scores[many]).max()),
      "max_abs_diff_vs_unsharded": float(np.abs(scores[1] - plain).max()),
      "cpu_cores": os.cpu_count(),
  }))


if __name__ == "__main__":
  main()
