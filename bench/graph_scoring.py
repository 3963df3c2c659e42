"""Graph scores per second: batched (vmapped, jitted) GCN scoring vs a per-graph loop.

Prints one JSON line. Sizes default to the paper's: B=64 queries x K=200
candidate DAGs x N=8 roles, query embedding size 1024. All figures come from one
run: the batched scorer (jraph segment form and dense form), a reference that
calls a jitted single-graph scorer in a Python loop, and a large f32 matmul that
sets the FLOP roofline of this machine.

    python bench/graph_scoring.py [--batch 64 --pool 200 --roles 8 --query_dim 1024]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hieramas_jax import graphs
from hieramas_jax.models import gcn

import timing  # bench/timing.py (the script's own folder is on sys.path)


def matmul_flops_per_s(size: int = 2048, repeats: int = 5) -> float:
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  mm = jax.jit(lambda x, y: x @ y)
  t = timing.best_time(lambda: mm(a, b).block_until_ready(), repeats)
  return 2 * size**3 / t

def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--pool", type=int, default=200)
  parser.add_argument("--roles", type=int, default=8)
  parser.add_argument("--query_dim", type=int, default=1024)
  parser.add_argument("--hidden_dim", type=int, default=64)
  parser.add_argument("--num_layers", type=int, default=2)
  parser.add_argument("--loop_pairs", type=int, default=2000,
                      help="(query, graph) pairs timed for the per-graph loop; its rate is per pair")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  b, k, n = args.batch, args.pool, args.roles
  model = gcn.GraphClassifier(n, args.query_dim, hidden_dim=args.hidden_dim, num_layers=args.num_layers,
                              rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  q = jax.random.normal(jax.random.key(2), (b, args.query_dim), jnp.float32)
  pool = jnp.asarray(graphs.dag_pool(0, n, k, (0.2, 0.8)), jnp.float32)

  rates = {}
  for impl in gcn.IMPLEMENTATIONS:
    t = timing.best_time(lambda: gcn.score_pool(graphdef, params, q, pool, impl=impl).block_until_ready(), args.repeats)
    rates[impl] = b * k / t

  pairs = [(i % b, i // b % k) for i in range(min(args.loop_pairs, b * k))]

  def loop():
    out = None
    for qi, gi in pairs:
      out = gcn.score_single(graphdef, params, q[qi], pool[gi])
    out.block_until_ready()

  loop_rate = len(pairs) / timing.best_time(loop, max(1, args.repeats // 2))
  peak = matmul_flops_per_s()
  flops = gcn.flops_per_score(n, args.hidden_dim, args.num_layers, 64, args.query_dim, 32, k)
  best_impl = max(rates, key=rates.get)
  print(json.dumps({
      "bench": "graph_scoring",
      "device": str(jax.devices()[0].platform),
      "batch": b, "pool": k, "roles": n, "query_dim": args.query_dim, "hidden_dim": args.hidden_dim,
      "scores_per_s_segment": round(rates["segment"]),
      "scores_per_s_dense": round(rates["dense"]),
      "scores_per_s_loop": round(loop_rate),
      "speedup_segment_vs_loop": round(rates["segment"] / loop_rate, 1),
      "speedup_dense_vs_loop": round(rates["dense"] / loop_rate, 1),
      "flops_per_score": round(flops),
      "matmul_flops_per_s": round(peak),
      "roofline_fraction_segment": round(rates["segment"] * flops / peak, 4),
      "roofline_fraction_dense": round(rates["dense"] * flops / peak, 4),
      "fastest": best_impl,
  }))

if __name__ == "__main__":
  main()
