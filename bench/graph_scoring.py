"""Graph scores per second: the GCN fast path against the per-pair formulation, a per-graph loop and the matmul rate.

Prints one JSON line; every figure comes from this one process (ratios, not
absolute timings, compare across machines). At the main point (default B=64
queries x K=200 candidate DAGs x N=8 roles, query embeddings of size 1024):

- scores/s of ``gcn.score_pool`` on the fast path (impl 'dense': on a CPU the
  C kernel of ``native_pool`` where a C compiler could build it, else XLA), of
  the same fast path on XLA alone, of the original per-pair formulation ('dense_per_pair', what 'dense' computed before
  the fast path) and of the jraph per-pair form ('segment'), timed in turns so
  all see the same machine load; and of a Python loop over a jitted
  single-pair scorer;
- the f32 matmul rate measured here: an in-cache [3200, 64] x [64, 64] product
  repeated inside one jitted loop, the same product as one call, and 2048^3;
  the fraction of each that the fast path reaches (FLOPs it executes, and the
  model's FLOPs counted in the per-pair formulation);
- peak scratch memory of each compiled scorer (``memory_analysis``) and minor
  page faults per call;
- on an accelerator (or with ``--roofline``), the device's roofline measured
  here: the f32 matmul rate at the scorer's precision (float32 products, no
  TF32: 8192^3; 2048^3 on a CPU) and the copy bandwidth of a large array; per XLA executable of the fast
  path (the main point and every grid point) its FLOPs and bytes (XLA's
  ``cost_analysis``), the rate the roofline allows (``min(peak, intensity x
  bandwidth)``) and the fraction of it reached. Not by default on a CPU: the
  cost analysis counts every operand as memory traffic, and on a CPU most stay
  in cache (fractions above 1); the in-cache matmul fractions are its measure;
- a grid of B in {1, 8, 64, 256} x K in {50, 200, 1000} for the fast path (one
  pool scored for many queries, so its prepared terms are cached): per point the
  scores/s, the fraction of the best point, the call's time, the fraction with
  a fixed per-call cost taken off, and the peak scratch bytes of its compiled
  executable (or the C kernel's working memory), minor page faults per call,
  the path it took, and the XLA path's scores/s (the grid's points are timed in
  turns of their own; the XLA figures below in a second set of turns, since
  interleaved XLA calls slowed the C kernel's small calls); the fixed per-call costs (the dispatch
  floor: a jitted no-op taking the same arguments, which XLA runs on the calling
  thread; the hand-off floor: a trivial product XLA runs on a worker thread, so
  dispatch, hand-off and the caller's wake-up; a whole B=1, K=1 call, timed on its own: a call of one pair leaves
  the C kernel's worker little to do, and in the grid's turns such calls let it fall asleep); B=1, K=50 and B=8, K=50 calls after 2 ms idle; the whole
  computation per call (nothing cached) at small points, a B=1, K=50 call on a
  new pool each time, and the same call through a jit with the graphdef as a
  static argument (``score_pool`` before ``PoolScorer``);
- scores/s of cached calls with 800, 1600 and 3200 pairs per block at three
  points (what ``PAIRS_PER_BLOCK`` is set from); a cached call's time on the host
  path (NumPy on the calling thread) and on XLA over a ladder of small points, and
  the largest B x K up to which the host was faster (what ``HOST_MAX_PAIRS`` is
  set from; ``--host_path_only`` prints only these); each grid point says which
  path ``score_pool`` took;
- optionally (``--reference_python=<python with torch>``) the same model in
  dense PyTorch with the same weights: its scores/s and largest score difference.

All timings are medians over ``--repeats`` samples (each sample at least
``--min_sample_s`` long, calls repeated to fill it), taken in turns.

    python bench/graph_scoring.py [--batch 64 --pool 200 --roles 8 --query_dim 1024]
    python bench/graph_scoring.py --reference_python=/tmp/torchvenv/bin/python
    python bench/graph_scoring.py --host_path_only

On a GPU (jax with CUDA) the same command runs the same bench on it, jitted;
``--reference_python`` then times PyTorch on the GPU too, where it has one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time

import timing  # bench/timing.py (the script's own folder is on sys.path)

_GRID_BATCHES = (1, 8, 64, 256)
_GRID_POOLS = (50, 200, 1000)
# Pairs per block compared, and the points they are compared at (scores/s of cached calls): on a CPU around
# gcn_fast.PAIRS_PER_BLOCK, on an accelerator around ACCELERATOR_PAIRS_PER_BLOCK.
_BLOCK_SWEEP = (800, 1600, 3200)
_BLOCK_SWEEP_ACCELERATOR = (1600, 6400, 25600, 65536, 262144)
_BLOCK_SWEEP_POINTS = ((64, 50), (64, 200), (256, 1000))
# (B, K) points where the host path (NumPy on the caller's thread) and the XLA call are timed side by side.
_HOST_LADDER = ((1, 1), (1, 8), (64, 1), (1, 25), (1, 50), (8, 8), (1, 100), (64, 4), (8, 25), (1, 200), (8, 50),
                (1, 400), (8, 100))


def _calls_per_sample(fn, min_sample_s: float) -> int:
  """Calls that fill a sample, from the mean of calls over a tenth of one (one timed call can be an outlier)."""
  fn()  # warm-up (compilation)
  calls, start = 0, time.perf_counter()
  while True:
    fn()
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= min_sample_s / 10 or calls >= 1000:
      break
  return max(1, int(min_sample_s / max(elapsed / calls, 1e-7)) + 1)


def median_times(fns: dict, repeats: int, min_sample_s: float) -> dict[str, float]:
  """Median seconds per call of each blocking callable, sampled in turns (same load for all)."""
  calls = {name: _calls_per_sample(fn, min_sample_s) for name, fn in fns.items()}
  samples = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(calls[name]):
        fn()
      samples[name].append((time.perf_counter() - start) / calls[name])
  return {name: statistics.median(values) for name, values in samples.items()}


def host_path_figures(gcn, graphdef, params, queries_all, pool_all, repeats: int, min_sample_s: float) -> dict:
  """Per ``_HOST_LADDER`` point: a cached call on the NumPy host path, on XLA and in the C kernel (us), in turns.

  ``faster_up_to_pairs``: the largest B x K up to which every ladder point was
  faster on the host (what ``gcn_scoring.HOST_MAX_PAIRS`` is set from).
  """
  import jax  # pylint: disable=g-import-not-at-top

  host = gcn.PoolScorer(graphdef, host_max_pairs=10**9, native=False)
  xla = gcn.PoolScorer(graphdef, host_max_pairs=0, native=False)
  native = gcn.PoolScorer(graphdef, host_max_pairs=0, native=True)
  native_available = native.native_library(native.prepared_pool(params, pool_all[:1], None, 1)[0]) is not None
  fns = {}
  for b, k in _HOST_LADDER:
    q, a = queries_all[:b], pool_all[:k]
    fns[("host", b, k)] = lambda q=q, a=a: host(params, q, a)  # NumPy: done when it returns
    fns[("xla", b, k)] = lambda q=q, a=a: jax.block_until_ready(xla(params, q, a))
    if native_available:
      fns[("native", b, k)] = lambda q=q, a=a: native(params, q, a)
  times = median_times(fns, repeats, min_sample_s)
  faster_up_to = 0
  for b, k in sorted(_HOST_LADDER, key=lambda point: point[0] * point[1]):
    if times[("host", b, k)] >= times[("xla", b, k)]:
      break
    faster_up_to = b * k
  return {"points": {f"B{b}_K{k}": {"host_us": round(1e6 * times[("host", b, k)], 1),
                                    "xla_us": round(1e6 * times[("xla", b, k)], 1),
                                    "native_us": round(1e6 * times[("native", b, k)], 1) if native_available
                                    else None} for b, k in _HOST_LADDER},
          "faster_up_to_pairs": faster_up_to, "host_max_pairs_in_use": gcn.HOST_MAX_PAIRS}


def block_size_figures(gcn, tensors_fn, params, queries_all, pool_all, repeats: int, min_sample_s: float) -> dict:
  """Scores/s of cached calls at ``_BLOCK_SWEEP_POINTS`` with each of ``_BLOCK_SWEEP`` pairs per block (in turns).

  What ``gcn_fast.PAIRS_PER_BLOCK`` is set from: the same per-query executable
  as ``PoolScorer``'s, on a pool prepared in that block layout.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from hieramas_jax.models import gcn_fast  # pylint: disable=g-import-not-at-top

  tensors = tensors_fn(params)
  prepare = jax.jit(gcn_fast.prepare_shared_pool, static_argnums=3)
  score = jax.jit(gcn_fast.score_shared_pool, static_argnums=3)
  mask = jnp.ones((pool_all.shape[-1],), jnp.float32)
  sweep = _BLOCK_SWEEP if jax.default_backend() == "cpu" else _BLOCK_SWEEP_ACCELERATOR
  fns = {}
  for b, k in _BLOCK_SWEEP_POINTS:
    for pairs in sweep:
      prepared = prepare(tensors, pool_all[:k], mask, gcn_fast.block_layout(k, b, pairs))
      fns[(b, k, pairs)] = lambda q=queries_all[:b], p=prepared, k=k: score(tensors, p, q, k).block_until_ready()
  times = median_times(fns, repeats, min_sample_s)
  return {f"B{b}_K{k}": {str(pairs): round(b * k / times[(b, k, pairs)]) for pairs in sweep}
          for b, k in _BLOCK_SWEEP_POINTS} | {"pairs_per_block_in_use": gcn_fast.default_pairs_per_block()}


def after_idle_seconds(fn, calls: int = 200, idle_s: float = 0.002) -> float:
  """Median seconds of single calls, each after ``idle_s`` of idleness (a worker thread that spins only briefly
  after a call is asleep by then, as when queries come one at a time)."""
  fn()
  return statistics.median(timing.single_call_times(fn, calls, idle_s))


def minor_faults_per_call(fn, calls: int = 20) -> float:
  fn()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(calls):
    fn()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def device_roofline(jax, jnp, matmul_2048_flops_per_s: float, repeats: int, min_sample_s: float) -> dict:
  """The device's f32 matmul rate (at the scorer's precision: float32, no TF32) and copy bandwidth, measured here.

  On a CPU the 2048^3 product measured with the rest; on an accelerator an 8192^3 product (2048^3 is too
  small to fill one). The copy reads and writes a large array (bytes counted both ways).
  """
  on_cpu = jax.devices()[0].platform == "cpu"
  size = 1 << (24 if on_cpu else 28)  # floats: 64 MB on a CPU, 1 GB on an accelerator
  x = jnp.ones((size,), jnp.float32)
  copy = jax.jit(lambda v: v + 1.0)
  fns = {"copy": lambda: copy(x).block_until_ready()}
  if not on_cpu:
    from hieramas_jax.models import gcn_fast  # pylint: disable=g-import-not-at-top
    big = jax.random.normal(jax.random.key(6), (8192, 8192), jnp.float32)
    product = jax.jit(gcn_fast.float32_matmuls(lambda a: a @ a))  # the scorer's precision (no TF32)
    fns["matmul_8192"] = lambda: product(big).block_until_ready()
  times = median_times(fns, repeats, min_sample_s)
  peak = matmul_2048_flops_per_s if on_cpu else 2 * 8192**3 / times["matmul_8192"]
  bandwidth = 2 * 4 * size / times["copy"]
  return {"matmul_flops_per_s": round(peak), "matmul_shape": "2048^3" if on_cpu else "8192^3",
          "copy_bytes_per_s": round(bandwidth), "copy_bytes": 4 * size,
          "ridge_flops_per_byte": round(peak / bandwidth, 2)}


def roofline_figures(compiled, pairs: int, seconds: float, roofline: dict) -> dict:
  """FLOPs and bytes of one compiled call (XLA's cost analysis), the scores/s the roofline allows, and the
  fraction of it that ``pairs`` scores in ``seconds`` reach."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  bound_s = max(flops / roofline["matmul_flops_per_s"], nbytes / roofline["copy_bytes_per_s"])
  attainable = pairs / bound_s if bound_s > 0 else None
  return {"flops_per_call": round(flops), "bytes_per_call": round(nbytes),
          "flops_per_byte": round(flops / nbytes, 2) if nbytes else None,
          "bound": "compute" if flops / roofline["matmul_flops_per_s"] >= nbytes / roofline["copy_bytes_per_s"]
                   else "memory",
          "attainable_scores_per_s": round(attainable) if attainable else None,
          "fraction_of_roofline": round(pairs / seconds / attainable, 3) if attainable else None}


# ---------------------------------------------------------------------------
# The same model in dense PyTorch (runs under --reference_python; needs only numpy and torch)
# ---------------------------------------------------------------------------


def torch_worker(path: str) -> None:
  """Scores the saved inputs with the saved weights in dense PyTorch; prints one JSON line, writes the scores."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  with np.load(path) as f:
    data = {k: torch.from_numpy(f[k]) for k in f.files}
  repeats, min_sample_s = int(data.pop("repeats")), float(data.pop("min_sample_s"))
  # On the GPU when the JAX bench runs on one (like for like), else on the CPU.
  device = "cuda" if bool(data.pop("on_accelerator")) and torch.cuda.is_available() else "cpu"
  data = {k: v.to(device) for k, v in data.items()}
  q, adj = data.pop("query_emb"), data.pop("adjs")
  w = data
  layers = sorted({k.split("/")[1] for k in w if k.startswith("layers/")}, key=int)

  def scores() -> torch.Tensor:
    n = adj.shape[-1]
    adj_hat = adj + torch.eye(n, device=adj.device)
    s = adj_hat.sum(-1).clamp(min=1).rsqrt()[:, :, None] * adj_hat * adj_hat.sum(-2).clamp(min=1).rsqrt()[:, None, :]
    x = (w["role_embed"] @ w["role_in/kernel"])[None] + (q @ w["query_in/kernel"])[:, None]  # [B, N, H]
    h = torch.relu(torch.einsum("kij,bih->bkjh", s, x) + w["in_bias"])  # [B, K, N, H]
    for i in layers:
      z = h @ w[f"layers/{i}/kernel"] + w[f"layers/{i}/bias"]
      h = torch.relu(torch.einsum("kij,bkih->bkjh", s, z))
    pooled = h.mean(-2)
    hidden = torch.relu((pooled @ w["project/kernel"] + w["project/bias"]) @ w["head_hidden/kernel"]
                        + w["head_hidden/bias"])
    return (hidden @ w["head_out/kernel"] + w["head_out/bias"])[..., 0]

  def blocking():
    out = scores()
    if device == "cuda":
      torch.cuda.synchronize()
    return out

  with torch.inference_mode():
    out = blocking()
    seconds = median_times({"torch": blocking}, repeats, min_sample_s)["torch"]
  np.save(path + ".scores.npy", out.cpu().numpy())
  print(json.dumps({"scores_per_s": q.shape[0] * adj.shape[0] / seconds, "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": device}))


def run_torch_reference(python: str, params: dict, query_emb, adjs, repeats: int, min_sample_s: float,
                        on_accelerator: bool):
  """(figures, scores) of the dense PyTorch model in a subprocess under ``python``."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  flat = {}

  def add(prefix: str, tree) -> None:  # nested pure dict -> "a/b/c" keys
    if isinstance(tree, dict):
      for key, value in tree.items():
        add(f"{prefix}/{key}" if prefix else str(key), value)
    else:
      flat[prefix] = np.asarray(tree, np.float32)

  add("", params)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "inputs.npz")
    np.savez(path, query_emb=np.asarray(query_emb, np.float32), adjs=np.asarray(adjs, np.float32),
             repeats=repeats, min_sample_s=min_sample_s, on_accelerator=on_accelerator, **flat)
    out = subprocess.run([python, os.path.abspath(__file__), "--reference_worker", path], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
      raise RuntimeError(f"the PyTorch reference under {python} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), np.load(path + ".scores.npy")


# ---------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--pool", type=int, default=200)
  parser.add_argument("--roles", type=int, default=8)
  parser.add_argument("--query_dim", type=int, default=1024)
  parser.add_argument("--hidden_dim", type=int, default=64)
  parser.add_argument("--num_layers", type=int, default=2)
  parser.add_argument("--loop_pairs", type=int, default=1000,
                      help="(query, graph) pairs timed for the per-graph loop; its rate is per pair")
  parser.add_argument("--repeats", type=int, default=7, help="timed samples per figure (medians are reported)")
  parser.add_argument("--min_sample_s", type=float, default=0.05, help="calls are repeated to fill a sample")
  parser.add_argument("--no_grid", action="store_true", help="skip the B x K grid")
  parser.add_argument("--host_path_only", action="store_true",
                      help="print only the host-path vs XLA call times (what HOST_MAX_PAIRS is set from)")
  parser.add_argument("--roofline", action=argparse.BooleanOptionalAction, default=None,
                      help="the device roofline figures (default: on an accelerator only)")
  parser.add_argument("--reference_python", default=None, help="interpreter with torch (and numpy)")
  parser.add_argument("--reference_worker", metavar="NPZ", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.reference_worker:
    torch_worker(args.reference_worker)
    return

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from hieramas_jax import graphs  # pylint: disable=g-import-not-at-top
  from hieramas_jax.models import gcn, gcn_fast, gcn_scoring  # pylint: disable=g-import-not-at-top

  load_before = os.getloadavg()[0]
  b, k, n, h = args.batch, args.pool, args.roles, args.hidden_dim
  mlp, role_dim = 64, 32
  model = gcn.GraphClassifier(n, args.query_dim, role_dim=role_dim, hidden_dim=h, num_layers=args.num_layers,
                              mlp_dim=mlp, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)  # as the system and stage 2 pass them
  max_pool = max(k, *_GRID_POOLS)
  pool_all = jnp.asarray(graphs.dag_pool(0, n, max_pool, (0.2, 0.8)), jnp.float32)
  queries_all = jax.random.normal(jax.random.key(2), (max(b, *_GRID_BATCHES), args.query_dim), jnp.float32)
  q, pool = queries_all[:b], pool_all[:k]
  if args.host_path_only:
    figures = host_path_figures(gcn, graphdef, params, queries_all, pool_all, args.repeats, args.min_sample_s)
    print(json.dumps({"bench": "graph_scoring", "host_path": figures,
                      "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}))
    return

  def ready(out):
    """Blocks until a jax result is computed (a NumPy result, from the host paths, is complete already)."""
    return out if isinstance(out, np.ndarray) else jax.block_until_ready(out)

  def scorer(impl, q, pool):
    return lambda: ready(gcn.score_pool(graphdef, params, q, pool, impl=impl))

  # The fast path on XLA alone (no C kernel, no NumPy host path): what score_pool runs without a C compiler.
  xla_scorer = gcn.PoolScorer(graphdef, host_max_pairs=0, native=False)

  def xla_fast(q, pool):
    return lambda: jax.block_until_ready(xla_scorer(params, q, pool))

  default_scorer = gcn.pool_scorer(graphdef)
  native_lib = default_scorer.native_library(default_scorer.prepared_pool(params, pool, None, b)[0])

  # The matmul rate, in cache: [3200, 64] x [64, 64] repeated inside one jitted loop (an orthogonal matrix keeps
  # the values finite); as one call; and 2048^3.
  rows, inner = 3200, 100
  x0 = jax.random.normal(jax.random.key(3), (rows, h), jnp.float32)
  orth = jnp.linalg.qr(jax.random.normal(jax.random.key(4), (h, h), jnp.float32))[0]
  looped = jax.jit(lambda x, w: jax.lax.fori_loop(0, inner, lambda _, y: y @ w, x))
  single = jax.jit(lambda x, w: x @ w)
  big = jax.random.normal(jax.random.key(5), (2048, 2048), jnp.float32)

  impls = ("dense", "dense_per_pair", "segment")
  times = median_times({
      **{impl: scorer(impl, q, pool) for impl in impls},
      "dense_xla": xla_fast(q, pool),
      "matmul_in_cache_loop": lambda: looped(x0, orth).block_until_ready(),
      "matmul_in_cache_call": lambda: single(x0, orth).block_until_ready(),
      "matmul_2048": lambda: single(big, big).block_until_ready(),
  }, args.repeats, args.min_sample_s)
  rates = {impl: b * k / times[impl] for impl in (*impls, "dense_xla")}
  matmul = {"in_cache_loop": 2 * rows * h * h * inner / times["matmul_in_cache_loop"],
            "in_cache_call": 2 * rows * h * h / times["matmul_in_cache_call"],
            "2048": 2 * 2048**3 / times["matmul_2048"]}

  pairs = [(i % b, i // b % k) for i in range(min(args.loop_pairs, b * k))]

  def loop():
    out = None
    for qi, gi in pairs:
      out = gcn.score_single(graphdef, params, q[qi], pool[gi])
    out.block_until_ready()

  loop_rate = len(pairs) / median_times({"loop": loop}, max(3, args.repeats // 2), 0.0)["loop"]

  scores = {impl: np.asarray(gcn.score_pool(graphdef, params, q, pool, impl=impl)) for impl in impls}
  scores["dense_xla"] = np.asarray(xla_scorer(params, q, pool))
  memory = {impl: gcn.pool_scorer(graphdef, impl).lower(params, q, pool).compile().memory_analysis()
            for impl in impls}
  largest = gcn.pool_scorer(graphdef).lower(params, queries_all[:max(_GRID_BATCHES)], pool_all[:max(_GRID_POOLS)])
  largest_temp = largest.compile().memory_analysis().temp_size_in_bytes
  # The whole computation (an uncached call: parameter and pool terms included) at the main point.
  whole_temp = gcn.pool_scorer(graphdef)._jitted.lower(  # pylint: disable=protected-access
      params, q, pool, None).compile().memory_analysis().temp_size_in_bytes
  faults = {impl: minor_faults_per_call(scorer(impl, q, pool)) for impl in ("dense", "dense_per_pair")}

  with_roofline = args.roofline if args.roofline is not None else jax.devices()[0].platform != "cpu"
  roofline = device_roofline(jax, jnp, matmul["2048"], args.repeats, args.min_sample_s) if with_roofline else None
  in_cache = max(matmul["in_cache_loop"], matmul["in_cache_call"])
  model_flops = gcn.flops_per_score(n, h, args.num_layers, mlp, args.query_dim, role_dim, k)
  fast_flops = gcn.fast_path_flops_per_score(n, h, args.num_layers, mlp, args.query_dim, role_dim, b, k)
  result = {
      "bench": "graph_scoring",
      "device": jax.devices()[0].platform, "cpu_cores": os.cpu_count(),
      "batch": b, "pool": k, "roles": n, "query_dim": args.query_dim, "hidden_dim": h,
      "num_layers": args.num_layers, "pairs_per_block": gcn_fast.default_pairs_per_block(),
      "blocks": gcn.block_layout(k, b)[0],
      # The C kernel of native_pool where it could be built (score_pool's path on a CPU), else XLA.
      "fast_path": "native" if native_lib is not None else "xla",
      "native_kernel": {"available": native_lib is not None,
                        "unavailable_reason": default_scorer.native_unavailable_reason(
                            default_scorer.prepared_pool(params, pool, None, b)[0]),
                        "threads": getattr(native_lib, "threads", None),
                        "vector_width_floats": getattr(native_lib, "vector_width", None)},
      "scores_per_s_fast": round(rates["dense"]),
      "scores_per_s_fast_xla": round(rates["dense_xla"]),
      "scores_per_s_per_pair_dense": round(rates["dense_per_pair"]),
      "scores_per_s_per_pair_segment": round(rates["segment"]),
      "scores_per_s_loop": round(loop_rate),
      "speedup_fast_vs_per_pair_dense": round(rates["dense"] / rates["dense_per_pair"], 2),
      "speedup_fast_vs_per_pair_segment": round(rates["dense"] / rates["segment"], 2),
      "speedup_fast_vs_loop": round(rates["dense"] / loop_rate, 1),
      "max_abs_diff_fast_vs_per_pair_dense": float(np.abs(scores["dense"] - scores["dense_per_pair"]).max()),
      "max_abs_diff_fast_vs_segment": float(np.abs(scores["dense"] - scores["segment"]).max()),
      "max_abs_diff_fast_vs_fast_xla": float(np.abs(scores["dense"] - scores["dense_xla"]).max()),
      "speedup_fast_vs_fast_xla": round(rates["dense"] / rates["dense_xla"], 2),
      "matmul_flops_per_s_in_cache_loop": round(matmul["in_cache_loop"]),
      "matmul_flops_per_s_in_cache_one_call": round(matmul["in_cache_call"]),
      "matmul_flops_per_s_2048": round(matmul["2048"]),
      "flops_per_score_executed_fast": round(fast_flops),
      "flops_per_score_model": round(model_flops),
      # Fractions of the in-cache matmul rate (the higher of its two measurements): FLOPs the fast path executes
      # (the headline), and the model's FLOPs; then of 2048^3 and, for comparison, the per-pair formulation's.
      "fraction_of_in_cache_matmul": round(rates["dense"] * fast_flops / in_cache, 3),
      "fraction_of_in_cache_matmul_model_flops": round(rates["dense"] * model_flops / in_cache, 3),
      "fraction_of_2048_matmul": round(rates["dense"] * fast_flops / matmul["2048"], 3),
      "fraction_of_in_cache_matmul_per_pair_dense": round(rates["dense_per_pair"] * model_flops / in_cache, 3),
      # Working memory: of the C kernel's call (threads' activations and the projections) when it ran, and of
      # the XLA executables (compiled memory analysis).
      "scratch_bytes_fast": (native_lib.hieramas_scratch_bytes(b) if native_lib is not None else memory["dense"].temp_size_in_bytes),
      "scratch_bytes_fast_xla": memory["dense"].temp_size_in_bytes,
      "scratch_bytes_fast_uncached_call": whole_temp,
      "scratch_bytes_per_pair_dense": memory["dense_per_pair"].temp_size_in_bytes,
      "scratch_bytes_per_pair_segment": memory["segment"].temp_size_in_bytes,
      f"scratch_bytes_fast_B{max(_GRID_BATCHES)}_K{max(_GRID_POOLS)}": largest_temp,
      "minor_page_faults_per_call_fast": round(faults["dense"], 1),
      "minor_page_faults_per_call_per_pair_dense": round(faults["dense_per_pair"], 1),
  }
  if roofline is not None:  # the device's roofline, and where the fast path's XLA executable stands against it
    result["roofline"] = roofline
    result["roofline_fast_xla"] = roofline_figures(xla_scorer.lower(params, q, pool).compile(), b * k,
                                                   times["dense_xla"], roofline)

  if not args.no_grid:
    points = [(gb, gk) for gb in _GRID_BATCHES for gk in _GRID_POOLS]
    small_q, small_pool = queries_all[:1], pool_all[:50]
    # Fixed per-call costs. The dispatch floor: jit dispatch of the same arguments
    # (parameter dict, queries, pool) doing no work (XLA runs it on the calling thread: under 1000 FLOPs).
    no_op = jax.jit(lambda params, q, adjs: q[0, 0])
    # The hand-off floor: a trivial call above that bound ([8, 64] x [64, 64]), which XLA runs on a worker
    # thread: dispatch, the hand-off to the worker and the wake-up of the waiting caller.
    handoff_x, handoff_w = jnp.ones((8, h), jnp.float32), jnp.eye(h, dtype=jnp.float32)
    handoff = jax.jit(lambda x, w: x @ w)
    # score_pool as it was: the graphdef a static jit argument, hashed in Python on every call.
    static_graphdef = jax.jit(gcn_scoring._score_merged,  # pylint: disable=protected-access
                              static_argnames=("graphdef", "impl"))
    # The whole computation per call (parameter and pool terms included: what an uncached call runs).
    whole = gcn.pool_scorer(graphdef)._jitted  # pylint: disable=protected-access
    uncached_points = [(1, 1), (1, 50), (1, 200), (8, 50)]
    # A new pool object per call (more than PoolScorer.MAX_POOLS in turn): every call prepares its pool.
    cold_pools = [jnp.array(small_pool) for _ in range(2 * gcn.PoolScorer.MAX_POOLS)]
    cold_index = [0]

    def cold_call():
      cold_index[0] = (cold_index[0] + 1) % len(cold_pools)
      jax.block_until_ready(gcn.score_pool(graphdef, params, small_q, cold_pools[cold_index[0]]))

    # The grid's points (the path score_pool takes) in turns of their own: interleaved XLA calls measured to slow
    # the C kernel's small calls that follow them (XLA's runtime threads share the two cores). A B=1, K=1 call
    # (one pair: one thread's share) is timed on its own: in the grid's turns it once let the kernel's worker fall
    # asleep right before B=1, K=50 (EXPERIMENTS.md). The XLA comparisons and the fixed costs in a third set of turns.
    grid_times = median_times({point: scorer("dense", queries_all[:point[0]], pool_all[:point[1]])
                               for point in points}, args.repeats, args.min_sample_s)
    grid_times |= median_times({"one_pair": scorer("dense", small_q, pool_all[:1])}, args.repeats,
                               args.min_sample_s)
    grid_times |= median_times({
        **{("xla",) + point: xla_fast(queries_all[:point[0]], pool_all[:point[1]]) for point in points},
        **{("whole",) + point: (lambda q=queries_all[:point[0]], a=pool_all[:point[1]]:
                                whole(params, q, a, None).block_until_ready()) for point in uncached_points},
        "no_op": lambda: no_op(params, small_q, small_pool).block_until_ready(),
        "handoff": lambda: handoff(handoff_x, handoff_w).block_until_ready(),
        "cold_pool_B1_K50": cold_call,
        "static_graphdef": lambda: static_graphdef(graphdef, params, small_q, small_pool, None,
                                                   impl="dense").block_until_ready(),
    }, args.repeats, args.min_sample_s)
    floor, handoff_floor, fixed = grid_times["no_op"], grid_times["handoff"], grid_times["one_pair"]
    grid = {(gb, gk): gb * gk / grid_times[(gb, gk)] for gb, gk in points}
    best = max(grid.values())

    def fraction_less(cost: float) -> dict:
      """Each point's throughput with ``cost`` taken off its time, as a fraction of the best such point.

      None where the point's time is not above ``cost`` (within the timing noise: nothing left to rate).
      """
      rates = {(gb, gk): gb * gk / (grid_times[(gb, gk)] - cost) for gb, gk in points
               if grid_times[(gb, gk)] > 1.05 * cost}
      top = max(rates.values(), default=1.0)
      return {point: rates[point] / top if point in rates else None for point in points}

    def rounded_min(fractions: dict):
      values = [v for v in fractions.values() if v is not None]
      return round(min(values), 3) if values else None

    less_handoff, less_fixed = fraction_less(handoff_floor), fraction_less(fixed)
    compiled_xla = {point: xla_scorer.lower(params, queries_all[:point[0]], pool_all[:point[1]]).compile()
                    for point in points}
    scratch_xla = {point: compiled.memory_analysis().temp_size_in_bytes for point, compiled in compiled_xla.items()}

    def path(gb, gk):
      return "native" if native_lib is not None else "host" if gb * gk <= default_scorer.host_max_pairs else "xla"

    scratch = {(gb, gk): native_lib.hieramas_scratch_bytes(gb)
               if path(gb, gk) == "native" else None if path(gb, gk) == "host" else scratch_xla[(gb, gk)]
               for gb, gk in points}
    faults_grid = {point: minor_faults_per_call(scorer("dense", queries_all[:point[0]], pool_all[:point[1]]), 5)
                   for point in points}
    prepared = {gk: sum(x.nbytes for x in jax.tree.leaves(gcn.pool_scorer(graphdef).prepared_pool(
        params, pool_all[:gk], None, 1)[1][1])) for gk in _GRID_POOLS}
    # Per point: scores/s, its fraction of the best point, the call's time, and the fraction with the hand-off
    # floor or a whole B=1, K=1 call (the fixed per-call cost) taken off; peak scratch bytes of its executable.
    result["grid"] = {f"B{gb}_K{gk}": {
        "scores_per_s": round(grid[(gb, gk)]),
        "fraction_of_best": round(grid[(gb, gk)] / best, 3),
        "call_us": round(1e6 * grid_times[(gb, gk)], 1),
        "fraction_less_handoff_floor": None if less_handoff[(gb, gk)] is None else round(less_handoff[(gb, gk)], 3),
        "fraction_less_B1_K1_call": None if less_fixed[(gb, gk)] is None else round(less_fixed[(gb, gk)], 3),
        "scratch_bytes": scratch[(gb, gk)],  # of the path that ran (None: NumPy's temporaries, not measured)
        "minor_page_faults_per_call": round(faults_grid[(gb, gk)], 1),
        "path": path(gb, gk),
        "xla_scores_per_s": round(gb * gk / grid_times[("xla", gb, gk)]),
        "xla_scratch_bytes": scratch_xla[(gb, gk)],
    } for gb, gk in points}
    if roofline is not None:
      for gb, gk in points:
        result["grid"][f"B{gb}_K{gk}"]["xla_fraction_of_roofline"] = roofline_figures(
            compiled_xla[(gb, gk)], gb * gk, grid_times[("xla", gb, gk)], roofline)["fraction_of_roofline"]
    result["grid_min_over_best"] = round(min(grid.values()) / best, 3)
    result["grid_argmin"] = "B{}_K{}".format(*min(grid, key=grid.get))
    result["grid_argmax"] = "B{}_K{}".format(*max(grid, key=grid.get))
    result["grid_min_over_best_less_handoff_floor"] = rounded_min(less_handoff)
    result["grid_min_over_best_less_B1_K1_call"] = rounded_min(less_fixed)
    # Points of at least one block's worth of pairs (smaller ones are bound by the fixed cost of a call).
    result["grid_min_over_best_where_B_x_K_at_least_3200"] = round(
        min(rate for (gb, gk), rate in grid.items() if gb * gk >= 3200) / best, 3)
    result["grid_points_below_0.7_of_best"] = sorted(f"B{gb}_K{gk}" for (gb, gk), rate in grid.items()
                                                     if rate < 0.7 * best)
    result["fixed_per_call_us"] = {
        "dispatch_floor": round(1e6 * floor, 1), "worker_handoff_floor": round(1e6 * handoff_floor, 1),
        "call_B1_K1": round(1e6 * fixed, 1)}
    # The whole computation per call (no cached parameter or pool terms) at small points, and a B=1, K=50 call
    # on a pool it has not seen (prepared in the call), against the cached call.
    result["uncached_call_us"] = {f"B{gb}_K{gk}": round(1e6 * grid_times[("whole", gb, gk)], 1)
                                  for gb, gk in uncached_points}
    result["call_us_B1_K50_new_pool_each_call"] = round(1e6 * grid_times["cold_pool_B1_K50"], 1)
    # Routing queries one at a time (or a few) between LLM calls: each call after 2 ms of idleness (the kernel's
    # workers asleep), on the default path and on XLA.
    result["call_us_after_2ms_idle"] = {f"B{gb}_K{gk}": {
        "default": round(1e6 * after_idle_seconds(scorer("dense", queries_all[:gb], pool_all[:gk])), 1),
        "xla": round(1e6 * after_idle_seconds(xla_fast(queries_all[:gb], pool_all[:gk])), 1)}
        for gb, gk in ((1, 50), (8, 50))}
    result["call_us_B1_K50_static_graphdef_jit"] = round(1e6 * grid_times["static_graphdef"], 1)
    result["prepared_pool_bytes"] = {f"K{gk}": nbytes for gk, nbytes in prepared.items()}
    result["scores_per_s_by_pairs_per_block"] = block_size_figures(
        gcn, gcn.pool_scorer(graphdef)._tensors, params, queries_all, pool_all,  # pylint: disable=protected-access
        args.repeats, args.min_sample_s)
    result["host_path"] = host_path_figures(gcn, graphdef, params, queries_all, pool_all, args.repeats,
                                            args.min_sample_s)

  if args.reference_python:
    figures, torch_scores = run_torch_reference(args.reference_python, params, q, pool, args.repeats,
                                                args.min_sample_s, jax.devices()[0].platform != "cpu")
    result["scores_per_s_torch_dense"] = round(figures["scores_per_s"])
    result["torch_threads"] = figures["threads"]
    result["torch_device"] = figures["device"]
    result["speedup_fast_vs_torch_dense"] = round(rates["dense"] / figures["scores_per_s"], 2)
    result["speedup_per_pair_dense_vs_torch_dense"] = round(rates["dense_per_pair"] / figures["scores_per_s"], 2)
    result["max_abs_diff_fast_vs_torch"] = float(np.abs(scores["dense"] - torch_scores).max())
  result["load_average_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  print(json.dumps(result))


if __name__ == "__main__":
  main()
