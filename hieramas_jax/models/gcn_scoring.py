"""Cached pool scoring: ``score_pool`` through one ``PoolScorer`` per classifier graphdef.

A call with one pool and one role mask for all queries runs only the per-query
part of the fast path (``gcn_fast.score_shared_pool``): the parameter terms and
the pool terms are cached. Calls of at most ``HOST_MAX_PAIRS`` (query, graph)
pairs run that part in NumPy on the caller's thread instead (``gcn_fast.host_score``):
no dispatch, no hand-off to an XLA worker thread and no wake-up of the caller,
which cost more than the work itself at such sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hieramas_jax.models import gcn_fast

# Calls of at most this many (query, graph) pairs on a cached shared pool run on the host (NumPy, caller's thread).
# Set from bench/graph_scoring.py's host_path figures (EXPERIMENTS.md, 2026-12-04, issue 17 host path): over three
# runs on 2 cores at load 5-8 the host call was faster up to 64, 256 and 100 pairs (the median, 100, is used):
# 2-5x up to 25 pairs, 1.2-1.7x at 50, about even at 200 (B1 K200, B8 K25), slower from 256-400 on.
HOST_MAX_PAIRS = 100


def _scoring_tensors(graphdef, params) -> dict:
  return nnx.merge(graphdef, params).scoring_tensors()


def _score_merged(graphdef, params, query_emb, adjs, role_mask, impl: str):
  """Logits [B, K] of the classifier ``nnx.merge(graphdef, params)`` (traced once per PoolScorer and shape)."""
  return nnx.merge(graphdef, params)(query_emb, adjs, role_mask, impl=impl)


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
  small ones. On a CPU backend, calls of at most ``host_max_pairs`` pairs run it
  in NumPy on the calling thread (``host_score``, NumPy logits). The composed
  computation is the one ``GraphClassifier.__call__`` traces, so scores agree with
  it (tests).
  """

  MAX_POOLS = 8  # prepared pools kept per scorer (each O(K N H) floats)

  def __init__(self, graphdef, impl: str = "dense", *, host_max_pairs: int | None = None):
    if impl not in gcn_fast.IMPLEMENTATIONS:
      raise ValueError(f"unknown GCN implementation {impl!r}; choose one of {gcn_fast.IMPLEMENTATIONS}")
    self.graphdef = graphdef
    self.impl = impl
    # The host path runs where the arrays already live on the host: on a CPU backend only.
    self.host_max_pairs = (HOST_MAX_PAIRS if host_max_pairs is None else host_max_pairs) \
        if jax.default_backend() == "cpu" else 0
    self._jitted = jax.jit(lambda params, q, adjs, mask: _score_merged(graphdef, params, q, adjs, mask, impl))
    self._tensors = jax.jit(lambda params: _scoring_tensors(graphdef, params))
    self._prepare = jax.jit(gcn_fast.prepare_shared_pool, static_argnums=3)
    self._score = jax.jit(gcn_fast.score_shared_pool, static_argnums=3)
    self._tensors_entry = None  # [parameter leaves, their ids, tensors, host tensors or None]
    self._pools: dict[tuple, list] = {}  # key -> [inputs held so their ids stay theirs, prepared pool, host terms]
    self._fast_path = None if impl == "dense" else False  # decided on the first call (see _uses_fast_path)

  def _uses_fast_path(self, params) -> bool:
    """Whether the model has the GCN's shared-pool path (``scoring_tensors``); other classifiers use ``__call__``."""
    if self._fast_path is None:
      self._fast_path = hasattr(nnx.merge(self.graphdef, params), "scoring_tensors")
    return self._fast_path

  def _cached_tensors(self, params):
    """(tensors, [leaves, their ids, ...]) of ``params``, or (None, None) when a leaf cannot be keyed."""
    leaves = jax.tree.leaves(params)
    ids = tuple(map(id, leaves))
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

  def _host_call(self, params_entry, entry, query_emb, num_graphs: int) -> np.ndarray:
    """``host_score`` of a cached pool; its NumPy terms are made on the first host call and kept with the entry."""
    if params_entry[3] is None:
      params_entry[3] = gcn_fast.host_tensors(params_entry[2])
    if entry[2] is None:
      entry[2] = gcn_fast.host_pool(params_entry[3], entry[1], num_graphs)
    return gcn_fast.host_score(params_entry[3], entry[2], np.asarray(query_emb))

  def __call__(self, params, query_emb, adjs, role_mask=None):
    """Logits [B, K] of query embeddings [B, D] against adjacencies [K, N, N] or [B, K, N, N].

    A jax array, or a NumPy array for a call small enough to run on the host (see the class doc).
    """
    if self._uses_fast_path(params) and getattr(adjs, "ndim", 0) == 3 and getattr(role_mask, "ndim", 1) == 1 and \
        getattr(query_emb, "ndim", 0) == 2 and getattr(query_emb, "dtype", None) == jnp.float32:
      params_entry, entry = self._pool_entry(params, adjs, role_mask, query_emb.shape[0])
      if entry is not None and query_emb.shape[1] == params_entry[2]["query_kernel"].shape[0]:
        if query_emb.shape[0] * adjs.shape[0] <= self.host_max_pairs and \
            not isinstance(query_emb, jax.core.Tracer):
          return self._host_call(params_entry, entry, query_emb, adjs.shape[0])
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
