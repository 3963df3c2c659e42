"""Cached pool scoring: ``score_pool`` through one ``PoolScorer`` per classifier graphdef.

A call with one pool and one role mask for all queries runs only the per-query
part of the fast path (``gcn_fast.score_shared_pool``): the parameter terms and
the pool terms are cached. Calls of at most ``HOST_MAX_PAIRS`` (query, graph)
pairs run that part in NumPy on the caller's thread instead (``gcn_fast.host_score``):
no dispatch, no hand-off to an XLA worker thread and no wake-up of the caller,
which cost more than the work itself at such sizes. Where the C kernel of
``native_pool`` can be built (a C compiler is installed), every such call on a
CPU backend runs there instead, whatever its size: the calling thread and
spinning workers on the other cores split the pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hieramas_jax.models import gcn_fast, native_pool

# Calls of at most this many (query, graph) pairs on a cached shared pool run on the host (NumPy, caller's thread).
# Set from bench/graph_scoring.py's host_path figures (EXPERIMENTS.md, 2026-12-04, issue 17 host path): over three
# runs on 2 cores at load 5-8 the host call was faster up to 64, 256 and 100 pairs (the median, 100, is used):
# 2-5x up to 25 pairs, 1.2-1.7x at 50, about even at 200 (B1 K200, B8 K25), slower from 256-400 on.
HOST_MAX_PAIRS = 100


_FLOAT32 = np.dtype(np.float32)


def _scoring_tensors(graphdef, params) -> dict:
  return nnx.merge(graphdef, params).scoring_tensors()


def _score_merged(graphdef, params, query_emb, adjs, role_mask, impl: str):
  """Logits [B, K] of the classifier ``nnx.merge(graphdef, params)`` (traced once per PoolScorer and shape)."""
  return nnx.merge(graphdef, params)(query_emb, adjs, role_mask, impl=impl)


def _unchanged_check(tree):
  """A function ``check(t)``: whether ``t`` is ``tree`` and still holds the keys and leaves it holds now.

  For trees of nested dicts of jax arrays (``nnx.to_pure_dict`` state), whose dicts can be changed in place; None
  for other trees. ``check`` compares the tree with a copy of its dicts that holds the same leaf objects: the
  dicts' own comparison, in C, which takes a leaf that is the same object as equal without looking at it (0.3 us
  for a dozen leaves, against 3 us to flatten the tree and compare leaf ids). A leaf that is another object is
  compared by value: an array of more than one element cannot say it is equal (an error: changed), and a
  one-element array with the same value gives the same scores.
  """

  def copy(node):
    out = {}
    for key, value in node.items():
      if type(value) is dict:  # pylint: disable=unidiomatic-typecheck
        value = copy(value)
        if value is None:
          return None
      elif not isinstance(value, jax.Array) or isinstance(value, jax.core.Tracer):
        return None
      out[key] = value
    return out

  snapshot = copy(tree) if type(tree) is dict else None  # pylint: disable=unidiomatic-typecheck
  if snapshot is None:
    return None

  def check(candidate) -> bool:
    try:
      return candidate is tree and candidate == snapshot
    except Exception:  # pylint: disable=broad-except - a leaf replaced by an array that cannot compare as one bool
      return False

  return check


def _input_key(x):
  """A cache key standing for an input's value, or None if it cannot be keyed (a tracer or an unknown type).

  Jax arrays are immutable: their identity stands for their value while the
  cache entry holds them (so the id is not reused). NumPy arrays can change in
  place: they are keyed by content.
  """
  if x is None:
    return ("none",)
  if isinstance(x, jax.core.Tracer):
    return None
  if isinstance(x, jax.Array):
    return ("id", id(x))
  if isinstance(x, np.ndarray):
    return ("bytes", x.shape, x.dtype.str, x.tobytes())
  return None


class PoolScorer:
  """``score_pool`` bound to one graphdef and implementation: jitted once, with nothing hashed per call.

  ``jax.jit`` hashes its static arguments on every call, and a flax graphdef hashes
  in Python (over 100 us, the better part of a B=1, K=50 call); closing over the
  graphdef leaves jit's C++ dispatch of the array arguments only. Shapes are the
  only trace key: new parameter or input values never recompile.

  On the fast path with one pool and one role mask for all queries, the work that
  does not depend on the queries is done once and cached: the parameter-derived
  tensors (``GraphClassifier.scoring_tensors``, keyed by the parameter leaves) and
  the pool's normalised adjacencies and layer-1 role term (``prepare_shared_pool``,
  keyed by parameters, pool, mask and block layout; jax arrays by identity, NumPy
  arrays by content). A call then runs only the per-query part
  (``score_shared_pool``): a few large ops in one chain instead of about twenty
  small ones. On a CPU backend it runs on the host (NumPy logits): in the C kernel
  of ``native_pool`` when that can be built (``native``), else, for calls of at
  most ``host_max_pairs`` pairs, in NumPy on the calling thread (``host_score``). The composed
  computation is the one ``GraphClassifier.__call__`` traces, so scores agree with
  it (tests).
  """

  # Prepared pools kept per scorer (each O(K N H) floats, twice with the C kernel's copy): enough for a bench's
  # or a sweep's dozen pools scored in turns without preparing them again on every turn.
  MAX_POOLS = 16

  def __init__(self, graphdef, impl: str = "dense", *, host_max_pairs: int | None = None,
               native: bool | None = None):
    if impl not in gcn_fast.IMPLEMENTATIONS:
      raise ValueError(f"unknown GCN implementation {impl!r}; choose one of {gcn_fast.IMPLEMENTATIONS}")
    self.graphdef = graphdef
    self.impl = impl
    # The host paths run where the arrays already live on the host: on a CPU backend only.
    on_cpu = jax.default_backend() == "cpu"
    self.host_max_pairs = (HOST_MAX_PAIRS if host_max_pairs is None else host_max_pairs) if on_cpu else 0
    # The C kernel (native_pool) for cached pools of any size; None: where it can be built on this machine.
    self.native = on_cpu and native_pool.enabled() if native is None else bool(native)
    self._native_lib = None  # the kernel library, once looked up for this model's shape (False: unavailable)
    # The last native call's (parameters' unchanged check, pool, mask, concrete query types, NativePool): a call
    # with the same parameters and immutable pool and mask goes straight to the kernel (the cache lookups cost a
    # few us, a tenth of a B=1, K=50 call).
    self._recent = None
    self._jitted = jax.jit(lambda params, q, adjs, mask: _score_merged(graphdef, params, q, adjs, mask, impl))
    self._tensors = jax.jit(lambda params: _scoring_tensors(graphdef, params))
    self._prepare = jax.jit(gcn_fast.prepare_shared_pool, static_argnums=3)
    self._score = jax.jit(gcn_fast.score_shared_pool, static_argnums=3)
    self._tensors_entry = None  # [parameter leaves, (treedef, their ids), tensors, host arrays (C kernel or NumPy)]
    self._pools: dict[tuple, list] = {}  # key -> [inputs held so their ids stay theirs, prepared pool, host terms]
    self._fast_path = None if impl == "dense" else False  # decided on the first call (see _uses_fast_path)

  def _uses_fast_path(self, params) -> bool:
    """Whether the model has the GCN's shared-pool path (``scoring_tensors``); other classifiers use ``__call__``."""
    if self._fast_path is None:
      self._fast_path = hasattr(nnx.merge(self.graphdef, params), "scoring_tensors")
    return self._fast_path

  def _cached_tensors(self, params):
    """(tensors, [leaves, their ids, ...]) of ``params``, or (None, None) when a leaf cannot be keyed."""
    leaves, treedef = jax.tree.flatten(params)
    ids = (treedef, *map(id, leaves))  # the structure too: a key renamed in place is another tree
    entry = self._tensors_entry
    if entry is not None and entry[1] == ids:  # the same live objects (the entry holds them): the same values
      return entry[2], entry
    if not all(isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) for leaf in leaves):
      return None, None  # NumPy leaves can change in place, tracers have no value: no caching
    entry = self._tensors_entry = [leaves, ids, self._tensors(params), None]
    return entry[2], entry

  def _pool_entry(self, params, adjs, role_mask, batch: int):
    """(tensors entry, pool entry) of a shared pool [K, N, N] and mask [N] or None; (None, None) if not cacheable."""
    tensors, params_entry = self._cached_tensors(params)
    pool_key, mask_key = _input_key(adjs), _input_key(role_mask)
    n = tensors["role_part"].shape[0] if tensors is not None else None
    if tensors is None or pool_key is None or mask_key is None or adjs.shape[-2:] != (n, n) or (
        role_mask is not None and role_mask.shape != (n,)):
      return None, None  # not cacheable, or wrong shapes (the model's checks say what is wrong)
    layout = gcn_fast.block_layout(adjs.shape[0], batch)
    key = (params_entry[1], pool_key, mask_key, layout)
    entry = self._pools.pop(key, None)  # re-inserted below: the least recently used entry goes first
    if entry is None:
      mask = jnp.ones((n,), jnp.float32) if role_mask is None else jnp.asarray(role_mask, jnp.float32)
      held = (params_entry[0], adjs, role_mask)  # keeps the keyed ids from being reused while the entry lives
      entry = [held, self._prepare(tensors, jnp.asarray(adjs, jnp.float32), mask, layout), None]
      if len(self._pools) >= self.MAX_POOLS:
        self._pools.pop(next(iter(self._pools)))  # the least recently used
    self._pools[key] = entry
    return params_entry, entry

  def prepared_pool(self, params, adjs, role_mask, batch: int):
    """(tensors, (held inputs, prepared pool, ...)) for a shared pool; (None, None) if not cacheable."""
    params_entry, entry = self._pool_entry(params, adjs, role_mask, batch)
    return (None, None) if entry is None else (params_entry[2], entry)

  @staticmethod
  def _native_shape(tensors: dict) -> tuple[int, int, int, int]:
    """The kernel's compile-time shape (roles, hidden, mlp, hidden layers) for ``scoring_tensors``."""
    return (*tensors["role_part"].shape, tensors["head_kernel"].shape[1], len(tensors["layers"]))

  def native_library(self, tensors: dict):
    """The C kernel for this model's shape, or None (not on a CPU backend, disabled, or it cannot be built)."""
    if not self.native:
      return None
    if self._native_lib is None:
      self._native_lib = native_pool.library(self._native_shape(tensors)) or False
    return self._native_lib or None

  def native_unavailable_reason(self, tensors: dict) -> str | None:
    """Why ``native_library(tensors)`` is None, or None when the kernel is in use."""
    if self.native_library(tensors) is not None:
      return None
    if jax.default_backend() != "cpu":
      return "not a CPU backend: XLA runs the fast path"
    if not self.native:
      return "turned off for this scorer (native=False)" if native_pool.enabled() else \
          native_pool.unavailable_reason(self._native_shape(tensors))
    return native_pool.unavailable_reason(self._native_shape(tensors))

  def _host_call(self, params, params_entry, entry, query_emb, adjs, role_mask) -> np.ndarray:
    """A cached pool scored on the host: the C kernel, else ``host_score``. Its terms are kept with the entry."""
    if entry[2] is None:
      lib = self.native_library(params_entry[2])
      if params_entry[3] is None:  # the parameters' host arrays, shared by their pools
        host = gcn_fast.host_tensors(params_entry[2])
        params_entry[3] = native_pool.native_weights(host) if lib is not None else host
      entry[2] = native_pool.NativePool(lib, params_entry[3], entry[1], adjs.shape[0]) if lib is not None else \
          gcn_fast.host_pool(params_entry[3], entry[1], adjs.shape[0])
    if isinstance(entry[2], native_pool.NativePool):
      if isinstance(adjs, jax.Array) and (role_mask is None or isinstance(role_mask, jax.Array)):
        # Immutable pool and mask: their identity stands for their value while _recent holds them.
        check = _unchanged_check(params)
        # The concrete query types that may skip here: the jax array type (a tracer's differs) and NumPy's; read
        # off a live array, not made at import (an array made at import would start the backend too early
        # for jax.distributed.initialize).
        self._recent = None if check is None else (check, adjs, role_mask, (type(adjs), np.ndarray), entry[2])
      return entry[2](query_emb)
    return gcn_fast.host_score(params_entry[3], entry[2], np.asarray(query_emb))

  def __call__(self, params, query_emb, adjs, role_mask=None):
    """Logits [B, K] of query embeddings [B, D] against adjacencies [K, N, N] or [B, K, N, N].

    A jax array, or a NumPy array for a call scored on the host (see the class doc).
    """
    recent = self._recent
    if recent is not None and adjs is recent[1] and role_mask is recent[2] and type(query_emb) in recent[3] and \
        query_emb.dtype == _FLOAT32 and recent[0](params):
      return recent[4](query_emb)  # float32 concrete queries, the last native call's parameters, pool and mask
    if self._uses_fast_path(params) and getattr(adjs, "ndim", 0) == 3 and getattr(role_mask, "ndim", 1) == 1 and \
        getattr(query_emb, "ndim", 0) == 2 and getattr(query_emb, "dtype", None) == jnp.float32:
      params_entry, entry = self._pool_entry(params, adjs, role_mask, query_emb.shape[0])
      if entry is not None and query_emb.shape[1] == params_entry[2]["query_kernel"].shape[0]:
        if not isinstance(query_emb, jax.core.Tracer) and (
            query_emb.shape[0] * adjs.shape[0] <= self.host_max_pairs or self.native_library(params_entry[2])):
          return self._host_call(params, params_entry, entry, query_emb, adjs, role_mask)
        return self._score(params_entry[2], entry[1], query_emb, adjs.shape[0])
    return self._jitted(params, query_emb, adjs, role_mask)

  def lower(self, params, query_emb, adjs, role_mask=None):
    """What a call with these inputs runs on XLA, lowered (``.compile().memory_analysis()`` and the like).

    The per-query executable of a cached shared pool, or the whole computation otherwise.
    """
    if self._uses_fast_path(params) and adjs.ndim == 3 and (role_mask is None or role_mask.ndim == 1):
      tensors, entry = self.prepared_pool(params, adjs, role_mask, query_emb.shape[0])
      if tensors is not None:
        return self._score.lower(tensors, entry[1], query_emb, adjs.shape[0])
    return self._jitted.lower(params, query_emb, adjs, role_mask)


# PoolScorers of recently used graphdefs, keyed by identity (a graphdef cannot be weakly referenced; holding it
# keeps its id from being reused while its entry lives). Bounded: a process builds few classifiers.
_SCORERS: dict[tuple[int, str], PoolScorer] = {}
_MAX_SCORERS = 32


def pool_scorer(graphdef, impl: str = "dense") -> PoolScorer:
  """The cached PoolScorer of ``graphdef`` (the same object on every call with the same graphdef object)."""
  key = (id(graphdef), impl)
  scorer = _SCORERS.get(key)
  if scorer is None or scorer.graphdef is not graphdef:
    scorer = PoolScorer(graphdef, impl)
    _SCORERS.pop(key, None)
    if len(_SCORERS) >= _MAX_SCORERS:
      _SCORERS.pop(next(iter(_SCORERS)))  # the oldest
    _SCORERS[key] = scorer
  return scorer


def score_pool(graphdef, params, query_emb, adjs, role_mask=None, impl: str = "dense"):
  """Pure scoring: logits [B, K] from split classifier state (through ``pool_scorer(graphdef, impl)``).

  A jax array, or NumPy for small calls scored on the host (``PoolScorer``); ``np.asarray`` takes both.
  """
  return pool_scorer(graphdef, impl)(params, query_emb, adjs, role_mask)
