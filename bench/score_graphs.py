"""Throughput of the sharded graph scorer (system.ShardedGraphScorer) on 1 and on all devices, or processes.

Prints one JSON line. Sizes: B=64 queries x K=200 candidate DAGs x N=8 roles, query
embeddings of size 384 (MiniLM), a GraphClassifier with random parameters. In one
process it times the scorer on the first device and on every local device, checks
that the two give bit-identical scores, and times the unsharded ``gcn.score_pool``
as a reference. A CPU-only process with one device re-runs itself with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (8 CPU devices sharing the
same cores: that shows the sharding's overhead, not a speed-up).

With ``--processes P`` it times ``launch.score_graphs``'s multi-process path instead
(``score_and_gather``: each process scores its share of the --batch_size batches on
its devices, process 0 gathers the scores through the coordinator): once in 1 process
with --devices CPU devices, once in P local processes (gloo on loopback) with
--devices / P each, and says whether the two runs' scores are bit-identical. On one
machine's shared cores no speed-up is expected: the figure shows the collective
path's overhead.

    python bench/score_graphs.py [--batch 64 --pool 200 --roles 8 --query_dim 384 --devices 8]
    python bench/score_graphs.py --processes 2 [--batch_size 16 --devices 8]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile

import timing  # bench/timing.py (the script's own folder is on sys.path)

_FORCED = "--xla_force_host_platform_device_count"
_REPO = pathlib.Path(__file__).resolve().parents[1]


def _respawn(devices: int) -> None:
  """Re-runs this script with ``devices`` host devices and forwards its JSON line."""
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {_FORCED}={devices}".strip())
  out = subprocess.run([sys.executable, *sys.argv, "--no_respawn"], env=env, capture_output=True, text=True,
                       check=False)
  if out.returncode != 0:
    sys.exit(f"bench subprocess with {devices} devices failed:\n{out.stderr[-3000:]}")
  print(out.stdout.strip().splitlines()[-1])


def _worker_env(devices: int) -> dict[str, str]:
  return dict(os.environ, XLA_FLAGS=f"{_FORCED}={devices}", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              PYTHONPATH=f"{_REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _run_workers(args, count: int, scores_file: pathlib.Path) -> dict:
  """Runs ``count`` worker processes of one run (``--devices / count`` devices each); process 0's JSON."""
  with socket.socket() as s:  # a free loopback port for the coordinator
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  sizes = [f"--batch={args.batch}", f"--pool={args.pool}", f"--roles={args.roles}", f"--query_dim={args.query_dim}",
           f"--repeats={args.repeats}", f"--batch_size={args.batch_size}"]
  procs = [subprocess.Popen([sys.executable, __file__, *sizes, f"--worker=127.0.0.1:{port},{count},{i},{scores_file}"],
                            env=_worker_env(args.devices // count), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=_REPO)
           for i in range(count)]
  try:
    outputs = [p.communicate(timeout=args.timeout_s) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    sys.exit(f"the {count}-process run took more than --timeout_s={args.timeout_s} s; killed")
  for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
    if p.returncode != 0:
      sys.exit(f"process {i} of the {count}-process run failed (status {p.returncode}):\n{err[-3000:]}")
  return json.loads(outputs[0][0].strip().splitlines()[-1])


def _compare_processes(args) -> None:
  """1 process with --devices devices against --processes processes sharing them: rates, bit-identity."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if args.devices % args.processes:
    sys.exit(f"--devices={args.devices} must divide by --processes={args.processes} (each process gets a share)")
  with tempfile.TemporaryDirectory() as tmp:
    one = _run_workers(args, 1, pathlib.Path(tmp) / "one.npy")
    many = _run_workers(args, args.processes, pathlib.Path(tmp) / "many.npy")
    scores_one, scores_many = np.load(pathlib.Path(tmp) / "one.npy"), np.load(pathlib.Path(tmp) / "many.npy")
  p = args.processes
  print(json.dumps({
      "bench": "score_graphs_processes",
      "platform": one["platform"],
      "batch": args.batch, "pool": args.pool, "roles": args.roles, "query_dim": args.query_dim,
      "batch_size": args.batch_size, "devices": args.devices, "processes": p,
      "scores_per_s_1_process": round(one["scores_per_s"]),
      f"scores_per_s_{p}_processes": round(many["scores_per_s"]),
      f"identical_1_vs_{p}_processes": bool(np.array_equal(scores_one, scores_many)),
      f"max_abs_diff_1_vs_{p}_processes": float(np.abs(scores_one - scores_many).max()),
      "cpu_cores": os.cpu_count(),
  }))


def _worker(args) -> None:
  """One process of a --processes run: times launch.score_graphs.score_and_gather; process 0 prints JSON."""
  address, count, index, scores_file = args.worker.split(",")
  sys.path.insert(0, str(_REPO))
  from hieramas_jax import distributed  # pylint: disable=g-import-not-at-top
  if int(count) > 1:
    distributed.initialize(distributed.Settings(coordinator_address=address, num_processes=int(count),
                                                process_id=int(index)))
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from hieramas_jax import graphs, system  # pylint: disable=g-import-not-at-top
  from hieramas_jax.models import gcn  # pylint: disable=g-import-not-at-top
  from launch import score_graphs  # pylint: disable=g-import-not-at-top

  b, k, n = args.batch, args.pool, args.roles
  graphdef, state = nnx.split(gcn.GraphClassifier(n, args.query_dim, rngs=nnx.Rngs(0)))
  # The classifier's scoring path with this process's devices, as HieraMAS.score_graphs has it.
  scorer = system.ShardedGraphScorer(graphdef, nnx.to_pure_dict(state), devices=jax.local_devices())
  hieramas = types.SimpleNamespace(score_graphs=scorer)
  query_emb = np.random.default_rng(1).normal(size=(b, args.query_dim)).astype(np.float32)
  pool = graphs.dag_pool(0, n, k, (0.2, 0.8))
  start, stop = score_graphs.batch_share(b, args.batch_size)
  mine = query_emb[start:stop]  # this process's rows

  def run():
    return score_graphs.score_and_gather(hieramas, mine, pool, b, args.batch_size)[0]

  seconds = timing.best_time(run, args.repeats)
  scores = run()
  if distributed.is_primary():
    np.save(scores_file, scores)
    print(json.dumps({"platform": jax.local_devices()[0].platform, "devices": distributed.total_devices(),
                      "scores_per_s": b * k / seconds}))
  distributed.finish()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--pool", type=int, default=200)
  parser.add_argument("--roles", type=int, default=8)
  parser.add_argument("--query_dim", type=int, default=384)
  parser.add_argument("--devices", type=int, default=8, help="host devices to force when only one CPU exists")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--processes", type=int, default=1, help="> 1: time 1 process against this many")
  parser.add_argument("--batch_size", type=int, default=16, help="queries per step (--processes mode)")
  parser.add_argument("--timeout_s", type=float, default=600, help="limit of each run (--processes mode)")
  parser.add_argument("--no_respawn", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # coordinator,count,index,scores file
  args = parser.parse_args()
  if args.worker is not None:
    _worker(args)
    return
  if args.processes > 1:
    _compare_processes(args)
    return

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
