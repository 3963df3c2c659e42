"""The C kernel that scores cached pools on a CPU (hieramas_jax/models/native_pool.py, pool_kernel.c)."""

import os
import pathlib
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hieramas_jax import graphs
from hieramas_jax.models import gcn, native_pool

pytestmark = pytest.mark.skipif(native_pool._compiler() is None, reason="no C compiler on this machine")
REPO = pathlib.Path(__file__).resolve().parents[1]


def _model(roles, query_dim, hidden, mlp, num_layers, seed=0):
  model = gcn.GraphClassifier(roles, query_dim, role_dim=6, hidden_dim=hidden, num_layers=num_layers, mlp_dim=mlp,
                              rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


# (roles, query dim, hidden, mlp, GCN layers): the paper's size, widths that are not a multiple of the vector
# width (24, 7, 5), no hidden layer (1 GCN layer) and three hidden layers.
SHAPES = [(8, 1024, 64, 64, 2), (3, 16, 24, 8, 4), (5, 10, 7, 5, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_native_scores_equal_the_xla_fast_path(shape):
  """Within 1e-5 of XLA's fast path, over batch sizes (past the staged buffers too), pool sizes and masks."""
  roles, query_dim, hidden, mlp, num_layers = shape
  graphdef, params = _model(*shape)
  native = gcn.PoolScorer(graphdef, host_max_pairs=0, native=True)
  xla = gcn.PoolScorer(graphdef, host_max_pairs=0, native=False)
  pool = jnp.asarray(graphs.dag_pool(0, roles, 8 if roles == 3 else 60, (0.0, 1.0)), jnp.float32)
  mask = jnp.ones((roles,)).at[1].set(0.0)
  # One query; more queries than the staged buffers hold, under a mask (each case compiles XLA's reference).
  for batch, k, role_mask in ((1, 7, None), (300, pool.shape[0], mask)):
    q = jax.random.normal(jax.random.key(batch + k), (batch, query_dim))
    adjs = pool[:k] if role_mask is None else pool[:k] * role_mask[:, None] * role_mask[None, :]
    got, want = native(params, q, adjs, role_mask), xla(params, q, adjs, role_mask)
    assert isinstance(got, np.ndarray) and isinstance(want, jax.Array) and got.shape == (batch, k)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # NumPy and float64 queries give the same scores (converted to float32, as the model does).
    np.testing.assert_allclose(native(params, np.asarray(q, np.float64), adjs, role_mask), want, atol=1e-5, rtol=0)
  assert native.native_library(native.prepared_pool(params, pool, None, 1)[0]) is not None


def test_score_pool_uses_the_kernel_and_notices_new_parameters():
  """The default scorer takes the kernel on a CPU; new parameter values (same pool object) give new scores."""
  graphdef, params = _model(8, 64, 64, 64, 2)
  pool = jnp.asarray(graphs.dag_pool(1, 8, 40, (0.2, 0.8)), jnp.float32)
  q = jax.random.normal(jax.random.key(0), (2, 64))
  xla = gcn.PoolScorer(graphdef, host_max_pairs=0, native=False)
  first = gcn.score_pool(graphdef, params, q, pool)
  assert isinstance(first, np.ndarray)
  np.testing.assert_allclose(first, xla(params, q, pool), atol=1e-5, rtol=0)
  doubled = jax.tree.map(lambda x: x * 2.0, params)
  np.testing.assert_allclose(gcn.score_pool(graphdef, doubled, q, pool), xla(doubled, q, pool), atol=1e-5, rtol=0)
  np.testing.assert_allclose(gcn.score_pool(graphdef, params, q, pool), first, atol=0, rtol=0)
  # Under jit the inputs are tracers: the XLA computation, never the kernel.
  traced = jax.jit(lambda p, x: gcn.score_pool(graphdef, p, x, pool))(params, q)
  assert isinstance(traced, jax.Array)
  np.testing.assert_allclose(traced, first, atol=1e-5, rtol=0)


def test_parameters_changed_in_place_are_noticed():
  """The same parameter dict, changed in place (a leaf, a nested dict, a key), is scored with its new values."""
  graphdef, params = _model(8, 64, 64, 64, 2)
  pool = jnp.asarray(graphs.dag_pool(1, 8, 40, (0.2, 0.8)), jnp.float32)
  q = jax.random.normal(jax.random.key(0), (1, 64))
  xla = gcn.PoolScorer(graphdef, host_max_pairs=0, native=False)
  scorer = gcn.PoolScorer(graphdef, native=True)
  first = scorer(params, q, pool)
  np.testing.assert_array_equal(scorer(params, q, pool), first)  # the fast lane: same objects, same scores
  changes = [
      lambda p: p["layers"][0].__setitem__("kernel", p["layers"][0]["kernel"] * 2.0),  # a nested leaf
      lambda p: p.__setitem__("project", {name: value * 0.5 for name, value in p["project"].items()}),  # a dict
      lambda p: p["head_out"].__setitem__("bias", p["head_out"]["bias"] + 1.0),  # the last leaf of a dict
  ]
  for change in changes:
    before = scorer(params, q, pool)
    change(params)
    got = scorer(params, q, pool)
    assert not np.allclose(got, before)
    np.testing.assert_allclose(got, xla(params, q, pool), atol=1e-5, rtol=0)
  # A key renamed in place (the same leaves, in the same order) is another tree: scored as XLA scores it.
  params["head_out"]["bias_renamed"] = params["head_out"].pop("bias")
  np.testing.assert_allclose(scorer(params, q, pool), xla(params, q, pool), atol=1e-5, rtol=0)


def test_queries_in_every_form_score_alike():
  """A jax array still being computed, NumPy views that are not C-contiguous, read-only, bfloat16 and lists."""
  graphdef, params = _model(8, 64, 64, 64, 2)
  pool = jnp.asarray(graphs.dag_pool(1, 8, 40, (0.2, 0.8)), jnp.float32)
  scorer = gcn.PoolScorer(graphdef, native=True)
  base = np.asarray(jax.random.normal(jax.random.key(0), (3, 64)))
  want = np.asarray(gcn.PoolScorer(graphdef, host_max_pairs=0, native=False)(params, jnp.asarray(base), pool))
  big = jnp.ones((1500, 1500))
  pending = jax.jit(lambda x, q: q + 0.0 * (x @ x @ x)[:3, :64])(big, base)  # dispatched, not yet computed
  strided = np.zeros((6, 128), np.float32)
  strided[::2, ::2] = base
  read_only = base.copy()
  read_only.setflags(write=False)
  forms = {"pending jax": pending, "strided": strided[::2, ::2], "fortran order": np.asfortranarray(base),
           "read-only": read_only, "jax slice": jnp.asarray(np.concatenate([base, base]))[3:]}
  for name, query in forms.items():
    for _ in range(2):  # the first call and the fast lane of the next
      np.testing.assert_allclose(scorer(params, query, pool), want, atol=1e-5, rtol=0, err_msg=name)
  native = scorer._recent[4]
  np.testing.assert_allclose(native(base.tolist()), want, atol=1e-5, rtol=0)
  bf16 = jnp.asarray(base, jnp.bfloat16)
  np.testing.assert_allclose(native(bf16), native(np.asarray(bf16, np.float32)), atol=0, rtol=0)
  results = [native(base), native(base)]
  results[0][...] = 0.0  # each call returns its own array
  np.testing.assert_allclose(results[1], want, atol=1e-5, rtol=0)


def test_calls_from_several_threads_give_the_sequential_scores():
  graphdef, params = _model(8, 64, 64, 64, 2)
  scorer = gcn.PoolScorer(graphdef, native=True)
  pools = [jnp.asarray(graphs.dag_pool(seed, 8, 30, (0.2, 0.8)), jnp.float32) for seed in range(3)]
  queries = [jax.random.normal(jax.random.key(i), (1 + i, 64)) for i in range(4)]
  want = {(i, j): scorer(params, q, p) for i, q in enumerate(queries) for j, p in enumerate(pools)}
  got, errors = {}, []

  def work(i):
    try:
      for _ in range(20):
        for j, p in enumerate(pools):
          got[(i, j)] = scorer(params, queries[i], p)
          np.testing.assert_array_equal(got[(i, j)], want[(i, j)])
    except Exception as err:  # noqa: BLE001 - reported below
      errors.append(err)

  threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors


def test_a_call_after_idle_scores_alike():
  """Calls that find the workers asleep (the caller starts alone, a worker joins once awake) give the same bits as
  calls that find them spinning."""
  graphdef, params = _model(8, 64, 64, 64, 2)
  scorer = gcn.PoolScorer(graphdef, native=True)
  pool = jnp.asarray(graphs.dag_pool(1, 8, 200, (0.2, 0.8)), jnp.float32)
  for batch, k in ((1, 50), (8, 50), (64, 200)):
    q = jax.random.normal(jax.random.key(batch), (batch, 64))
    busy = [scorer(params, q, pool[:k]) for _ in range(3)][-1]
    for _ in range(3):
      time.sleep(0.005)  # past the workers' 200 us of spinning: asleep
      np.testing.assert_array_equal(scorer(params, q, pool[:k]), busy)


_LATE_WORKERS_SCRIPT = """
import sys, time
import jax, numpy as np
from flax import nnx
from hieramas_jax import graphs
from hieramas_jax.models import gcn
model = gcn.GraphClassifier(8, 64, role_dim=6, hidden_dim=64, num_layers=2, mlp_dim=64, rngs=nnx.Rngs(5))
graphdef, state = nnx.split(model)
params = nnx.to_pure_dict(state)
scorer = gcn.PoolScorer(graphdef, native=True)
pool = jax.numpy.asarray(graphs.dag_pool(3, 8, 60, (0.2, 0.8)), jax.numpy.float32)
pools = {k: pool[:k] for k in (1, 2, 3, 7, 60)}
queries = np.asarray(jax.random.normal(jax.random.key(6), (17, 64)), np.float32)
rng = np.random.default_rng(7)
out = []
for _ in range(int(sys.argv[2])):
  b, k = int(rng.choice([1, 2, 3, 5, 17])), int(rng.choice([1, 2, 3, 7, 60]))
  pause = float(rng.choice([0, 0, 0, 3e-4, 1e-3]))  # workers asleep, waking, or late into a call
  if pause:
    time.sleep(pause)
  out.append(scorer(params, queries[:b], pools[k]).ravel())
np.save(sys.argv[1], np.concatenate(out))
"""


def test_late_sleeping_and_oversubscribed_workers_give_the_same_bits(tmp_path):
  """Many small calls of mixed sizes, some after the workers fell asleep, on 1 thread and on 6 threads on this
  machine's cores (workers often come late and take units from others' ranges): the same bits, since each unit is
  computed whole by one thread."""
  scores = {}
  for threads in (1, 6):
    out = str(tmp_path / f"late_{threads}.npy")
    env = dict(os.environ, HIERAMAS_NATIVE_THREADS=str(threads), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", _LATE_WORKERS_SCRIPT, out, "400"], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    scores[threads] = np.load(out)
  assert scores[1].size > 2000
  np.testing.assert_array_equal(scores[6], scores[1])


def test_a_call_of_more_pairs_than_a_range_word_holds():
  """Over 2^22 (query, graph) pairs, the kernel's units hold several pairs each: the scores still match XLA's."""
  graphdef, params = _model(4, 16, 8, 4, 2)  # a small model, so the call takes about a second
  pool = jnp.tile(jnp.asarray(graphs.dag_pool(4, 4, 100, (0.2, 0.8)), jnp.float32), (10, 1, 1))
  q = jax.random.normal(jax.random.key(8), (4200, 16))  # 4.2M pairs
  native = gcn.PoolScorer(graphdef, native=True)(params, q, pool)
  xla = gcn.PoolScorer(graphdef, host_max_pairs=0, native=False)(params, q, pool)
  np.testing.assert_allclose(native, np.asarray(xla), rtol=1e-5, atol=1e-5)


def test_other_python_threads_run_while_the_kernel_computes():
  """The kernel releases the GIL for its computation: a Python thread keeps running through a long call."""
  graphdef, params = _model(8, 64, 64, 64, 2)
  scorer = gcn.PoolScorer(graphdef, native=True)
  pool = jnp.asarray(graphs.dag_pool(1, 8, 1000, (0.2, 0.8)), jnp.float32)
  q = jax.random.normal(jax.random.key(0), (256, 64))
  scorer(params, q, pool)  # prepared, and the kernel loaded
  stamps, stop = [], threading.Event()

  def count():
    while not stop.is_set():
      stamps.append(time.perf_counter())

  counter = threading.Thread(target=count)
  counter.start()
  try:
    time.sleep(0.01)
    start = time.perf_counter()
    scorer(params, q, pool)  # 256 x 1000 pairs: about a tenth of a second on 2 cores
    end = time.perf_counter()
    time.sleep(0.01)
  finally:
    stop.set()
    counter.join()
  during = [t for t in stamps if start <= t <= end]
  # With the GIL held through the call, the counter would stand still from its start to its end.
  longest_pause = max(np.diff([start, *during, end]))
  assert end - start > 0.02 and longest_pause < 0.5 * (end - start), (end - start, longest_pause, len(during))


_SCRIPT = """
import os, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from hieramas_jax import graphs
from hieramas_jax.models import gcn
model = gcn.GraphClassifier(8, 64, hidden_dim=64, num_layers=2, rngs=nnx.Rngs(3))
graphdef, state = nnx.split(model)
params = nnx.to_pure_dict(state)
pool = jnp.asarray(graphs.dag_pool(2, 8, 50, (0.2, 0.8)), jnp.float32)
q = jax.random.normal(jax.random.key(4), (3, 64))
scores = gcn.score_pool(graphdef, params, q, pool)
assert isinstance(scores, np.ndarray)
if sys.argv[2] == "fork":  # the child of a fork starts its own workers (and runs no XLA computation)
  first_two = np.asarray(q[:2])
  pid = os.fork()
  if pid == 0:
    np.save(sys.argv[1] + ".child.npy", gcn.score_pool(graphdef, params, first_two, pool))
    os._exit(0)
  assert os.waitpid(pid, 0)[1] == 0
np.save(sys.argv[1], scores)
"""


def _run(tmp_path, name, threads, mode="plain"):
  out = str(tmp_path / f"{name}.npy")
  env = dict(os.environ, HIERAMAS_NATIVE_THREADS=str(threads), PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, "-c", _SCRIPT, out, mode], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return np.load(out)


@pytest.mark.slow  # over 10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_scores_do_not_depend_on_the_thread_count_and_survive_fork(tmp_path):
  """1 and 3 threads give bit-identical scores (each pair is computed whole by one thread); a forked child scores."""
  one = _run(tmp_path, "one", 1)
  three = _run(tmp_path, "three", 3, mode="fork")
  np.testing.assert_array_equal(one, three)
  np.testing.assert_array_equal(np.load(tmp_path / "three.npy.child.npy"), three[:2])


def _fresh(monkeypatch, tmp_path):
  """An empty library table and cache directory: the next ``library`` call builds (or fails to) from scratch."""
  monkeypatch.setattr(native_pool, "_libraries", {})
  monkeypatch.setattr(native_pool, "_reasons", {})
  monkeypatch.setattr(native_pool, "_warned", set())
  monkeypatch.setenv("HIERAMAS_NATIVE_CACHE", str(tmp_path / "cache"))


def test_without_a_compiler_scoring_falls_back_with_one_warning(monkeypatch, tmp_path):
  _fresh(monkeypatch, tmp_path)
  monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
  with pytest.warns(RuntimeWarning, match="native pool scoring is unavailable .*no C compiler found"):
    assert native_pool.library((8, 64, 64, 1)) is None
  assert "no C compiler found" in native_pool.unavailable_reason((8, 64, 64, 1))
  graphdef, params = _model(8, 64, 64, 64, 2)
  pool = jnp.asarray(graphs.dag_pool(1, 8, 20, (0.2, 0.8)), jnp.float32)
  q = jax.random.normal(jax.random.key(0), (1, 64))
  scorer = gcn.PoolScorer(graphdef, host_max_pairs=0)
  assert isinstance(scorer(params, q, pool), jax.Array)  # XLA: the kernel could not be built
  assert scorer.native_library(scorer.prepared_pool(params, pool, None, 1)[0]) is None


def test_a_compile_error_is_reported_with_the_compiler_output(monkeypatch, tmp_path):
  _fresh(monkeypatch, tmp_path)
  failing = tmp_path / "cc"
  failing.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n"
                     "echo 'pool_kernel.c:1: error: this compiler refuses' >&2; exit 1\n")
  failing.chmod(0o755)
  monkeypatch.setenv("CC", str(failing))
  with pytest.warns(RuntimeWarning, match="compiling pool_kernel.c failed"):
    assert native_pool.library((8, 64, 64, 1)) is None
  assert "this compiler refuses" in native_pool.unavailable_reason((8, 64, 64, 1))


def test_a_scorer_says_why_it_does_not_use_the_kernel(monkeypatch, tmp_path):
  graphdef, params = _model(8, 64, 64, 64, 2)
  pool = jnp.asarray(graphs.dag_pool(1, 8, 10, (0.2, 0.8)), jnp.float32)
  on = gcn.PoolScorer(graphdef, native=True)
  assert on.native_unavailable_reason(on.prepared_pool(params, pool, None, 1)[0]) is None
  off = gcn.PoolScorer(graphdef, native=False)
  assert "native=False" in off.native_unavailable_reason(off.prepared_pool(params, pool, None, 1)[0])
  _fresh(monkeypatch, tmp_path)
  monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
  broken = gcn.PoolScorer(graphdef, native=True)
  with pytest.warns(RuntimeWarning):
    reason = broken.native_unavailable_reason(broken.prepared_pool(params, pool, None, 1)[0])
  assert "no C compiler" in reason


def test_disabled_by_environment_and_bad_thread_counts_are_errors(monkeypatch, tmp_path):
  _fresh(monkeypatch, tmp_path)
  monkeypatch.setenv("HIERAMAS_NATIVE_SCORING", "0")
  assert native_pool.library((8, 64, 64, 1)) is None
  assert native_pool.unavailable_reason((8, 64, 64, 1)) == "disabled by HIERAMAS_NATIVE_SCORING=0"
  graphdef, _ = _model(8, 64, 64, 64, 2)
  assert gcn.PoolScorer(graphdef).native is False
  monkeypatch.setenv("HIERAMAS_NATIVE_THREADS", "two")
  with pytest.raises(ValueError, match="HIERAMAS_NATIVE_THREADS='two' is not a whole number"):
    native_pool.threads()
  monkeypatch.setenv("HIERAMAS_NATIVE_THREADS", "0")
  with pytest.raises(ValueError, match="must be at least 1"):
    native_pool.threads()


def test_the_compiled_library_is_cached_on_disk(monkeypatch, tmp_path):
  _fresh(monkeypatch, tmp_path)
  assert native_pool.library((4, 16, 16, 1)) is not None
  built = list((tmp_path / "cache").glob("pool_kernel_*.so"))
  assert len(built) == 1
  monkeypatch.setattr(native_pool, "_libraries", {})
  compiles = []
  original = subprocess.run

  def counting_run(command, **kwargs):
    if "-shared" in command:
      compiles.append(command)
    return original(command, **kwargs)

  monkeypatch.setattr(native_pool.subprocess, "run", counting_run)
  assert native_pool.library((4, 16, 16, 1)) is not None
  assert not compiles  # loaded from the cache: no compiler run
  assert list((tmp_path / "cache").glob("pool_kernel_*.so")) == built


def test_wrong_query_shapes_are_errors():
  graphdef, params = _model(8, 64, 64, 64, 2)
  scorer = gcn.PoolScorer(graphdef, native=True)
  pool = jnp.asarray(graphs.dag_pool(1, 8, 10, (0.2, 0.8)), jnp.float32)
  scorer(params, jnp.ones((1, 64)), pool)
  native = scorer._recent[4]
  with pytest.raises(ValueError, match=r"query embeddings have shape \(1, 63\); this pool scores \[B, 64\]"):
    native(np.ones((1, 63), np.float32))
  assert native(np.ones((0, 64), np.float32)).shape == (0, 10)
