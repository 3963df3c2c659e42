"""Candidate-DAG stacks: vectorised validation and scoring sharded over devices.

``ShardedGraphScorer`` scores [B, K] (query, DAG) pairs with a trained graph
classifier, the candidate axis K split over all local devices; every device
scores blocks of a size that does not depend on the device count, so 1 and 8
devices give bit-identical scores.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hieramas_jax import graphs
from hieramas_jax.models import gcn_fast


def check_graph_stack_shape(shape: Sequence[int], dtype: Any, num_roles: int, batch: int | None = None) -> None:
  """Checks the shape and dtype of candidate DAGs [K, N, N] or [B, K, N, N] before their entries are read.

  ``launch.score_graphs`` checks a file's header with it before reading only
  some of its rows. Raises graphs.InvalidGraphError naming the expected shape.
  """
  shape, dtype = tuple(shape), np.dtype(dtype)
  want = f"[K, {num_roles}, {num_roles}] (one pool for all queries) or [B, K, {num_roles}, {num_roles}] (per query)"
  if len(shape) not in (3, 4) or shape[-2:] != (num_roles, num_roles):
    raise graphs.InvalidGraphError(f"the graphs have shape {shape}; expected {want} for this system's "
                                   f"{num_roles} roles")
  if len(shape) == 4 and batch is not None and shape[0] != batch:
    raise graphs.InvalidGraphError(f"per-query graphs have shape {shape} for {batch} queries; expected "
                                   f"[{batch}, K, {num_roles}, {num_roles}]")
  if shape[-3] == 0:
    raise graphs.InvalidGraphError(f"the graph pool is empty (shape {shape}); give at least one graph")
  if not (np.issubdtype(dtype, np.number) or dtype == bool):
    raise graphs.InvalidGraphError(f"the graphs have dtype {dtype}; expected 0/1 numbers")


def validate_graph_stack(adjacency: Any, num_roles: int, batch: int | None = None,
                         first_query: int = 0) -> np.ndarray:
  """Checks candidate DAGs [K, N, N] (shared) or [B, K, N, N] (per query); returns them as int8.

  Raises graphs.InvalidGraphError naming the expected shape, or the index of
  the first bad graph and what is wrong with it (entry not 0/1, self-loop, cycle).
  ``first_query``: the index of the first row of a [B, K, N, N] slice in the
  whole stack (error messages count queries from there).
  """
  try:
    a = np.asarray(adjacency)
  except ValueError as e:  # ragged nested lists
    raise graphs.InvalidGraphError(f"the graphs cannot be read as one array ({e}); every adjacency must be "
                                   f"[{num_roles}, {num_roles}]") from None
  check_graph_stack_shape(a.shape, a.dtype, num_roles, batch)
  flat = a.reshape(-1, num_roles, num_roles)
  # Vectorised screening (a DAG's adjacency is nilpotent: A^N = 0); the per-graph
  # validator only runs on failures, to name the index and the problem.
  ok = ((flat == 0) | (flat == 1)).all(axis=(1, 2))
  ints = np.where(ok[:, None, None], flat, 0).astype(np.int8)
  ok &= ~np.diagonal(ints, axis1=1, axis2=2).any(axis=1)
  # Repeated squaring: A^(2^m) for 2^m >= N in log2(N) float32 products (0/1 entries, sums exact).
  power, exponent = ints.astype(np.float32), 1
  while exponent < num_roles:
    power = (power @ power > 0).astype(np.float32)
    exponent *= 2
  ok &= ~power.any(axis=(1, 2))
  if not ok.all():
    first = int(np.flatnonzero(~ok)[0])
    where = (f"graph {first}" if a.ndim == 3 else
             f"graph {first % a.shape[1]} of query {first_query + first // a.shape[1]}")
    try:
      graphs.validate_adjacency(flat[first], num_roles)
    except graphs.InvalidGraphError as e:
      raise graphs.InvalidGraphError(f"{where}: {e}") from None
    raise graphs.InvalidGraphError(f"{where} is not a DAG adjacency matrix")  # unreachable in practice
  return ints.reshape(a.shape)


class ShardedGraphScorer:
  """Scores [B, K] (query, DAG) pairs with a GraphClassifier, the K axis sharded over devices.

  The candidates are padded (with empty graphs, sliced off again) to a multiple
  of ``devices x block`` and split over a 1-D mesh with a NamedSharding; each
  device loops over blocks of ``block`` graphs. The block size depends on K and
  B only, never on the device count, so every device runs the same compiled
  block on the same shapes whatever the mesh size: 1 and 8 devices give
  bit-identical scores (the per-query inputs and parameters are replicated).

  On the fast path ('dense') a pool shared by all queries is prepared once (its
  blocks' ``gcn_fast.prepare_shared_pool`` terms, sharded like the pool, and the
  parameter terms, replicated) and kept for the next calls with the same pool
  and batch size, as ``HieraMAS.plan`` makes for the candidate pool: a call then
  runs only ``score_shared_pool`` per block.
  """

  MAX_POOLS = 4  # prepared pools kept (each O(K N H) floats per device)

  AXIS = "graphs"
  # The default block is ceil(K / 8): no more than 7 padded graphs on 1, 2, 4 or 8 devices.
  REFERENCE_DEVICES = 8
  # At most this many (query, graph) pairs per device per block: bounds activation memory.
  MAX_PAIRS_PER_BLOCK = 16384

  def __init__(self, graphdef, params, *, impl: str = "dense", devices: Sequence[jax.Device] | None = None,
               block: int | None = None):
    self.devices = tuple(devices) if devices is not None else tuple(jax.local_devices())
    if not self.devices:
      raise ValueError("ShardedGraphScorer needs at least one device")
    self.mesh = Mesh(np.array(self.devices), (self.AXIS,))
    self.graphdef = graphdef
    self.impl = impl
    self.block = block
    model = nnx.merge(graphdef, params)
    self.num_roles = int(model.num_roles)
    self.query_dim = int(model.query_dim)
    # The cached shared-pool path is the GCN's (scoring_tensors); any other classifier is scored by its __call__.
    self._fast_path = impl == "dense" and hasattr(model, "scoring_tensors")
    self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._compiled: dict[tuple[int, bool], Any] = {}
    self._tensors = None  # the fast path's parameter terms (replicated), made on first use
    self._pools: dict[tuple, Any] = {}  # (pool bytes, block, batch) -> prepared blocks, sharded over the mesh

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def block_size(self, num_graphs: int, batch: int) -> int:
    """Graphs per device per step: a function of K and B only (never of the device count)."""
    if self.block is not None:
      return max(1, int(self.block))
    return max(1, min(math.ceil(num_graphs / self.REFERENCE_DEVICES), self.MAX_PAIRS_PER_BLOCK // max(batch, 1)))

  def _function(self, block: int, per_query: bool):
    key = (block, per_query)
    if key not in self._compiled:
      graphdef, impl, n = self.graphdef, self.impl, self.num_roles

      def local(params, query_emb, adjs):
        model = nnx.merge(graphdef, params)
        if per_query:  # [B, K_local, N, N] -> [steps, B, block, N, N]
          b = adjs.shape[0]
          blocks = jnp.moveaxis(adjs.reshape(b, -1, block, n, n), 1, 0)
        else:  # [K_local, N, N] -> [steps, block, N, N]
          blocks = adjs.reshape(-1, block, n, n)
        scores = jax.lax.map(lambda a: model(query_emb, a.astype(query_emb.dtype), None, impl=impl), blocks)
        return jnp.moveaxis(scores, 0, 1).reshape(query_emb.shape[0], -1)  # [B, K_local]

      spec = PartitionSpec(None, self.AXIS) if per_query else PartitionSpec(self.AXIS)
      self._compiled[key] = jax.jit(jax.shard_map(
          local, mesh=self.mesh, in_specs=(PartitionSpec(), PartitionSpec(), spec),
          out_specs=PartitionSpec(None, self.AXIS)))
    return self._compiled[key]

  def _shared_pool_functions(self, block: int, batch: int):
    """(prepare, score) for a shared pool on the fast path: the two halves of ``_function(block, False)``.

    Per block of ``block`` graphs, ``prepare`` runs ``prepare_shared_pool`` and
    ``score`` ``score_shared_pool``: what the model computes for that block, with
    the query-independent half done once per pool.
    """
    key = ("shared", block, batch)
    if key not in self._compiled:
      n, layout = self.num_roles, gcn_fast.block_layout(block, batch)
      mask = np.ones((n,), np.float32)

      def prepare(tensors, adjs):  # [K_local, N, N] -> per step of ``block`` graphs, its prepared terms
        steps = adjs.astype(jnp.float32).reshape(-1, block, n, n)
        return jax.lax.map(lambda a: gcn_fast.prepare_shared_pool(tensors, a, jnp.asarray(mask), layout), steps)

      def score(tensors, prepared, query_emb):
        scores = jax.lax.map(lambda p: gcn_fast.score_shared_pool(tensors, p, query_emb, block), prepared)
        return jnp.moveaxis(scores, 0, 1).reshape(query_emb.shape[0], -1)  # [B, K_local]

      sharded, replicated = PartitionSpec(self.AXIS), PartitionSpec()
      self._compiled[key] = (
          jax.jit(jax.shard_map(prepare, mesh=self.mesh, in_specs=(replicated, sharded), out_specs=sharded)),
          jax.jit(jax.shard_map(score, mesh=self.mesh, in_specs=(replicated, sharded, replicated),
                                out_specs=PartitionSpec(None, self.AXIS))))
    return self._compiled[key]

  def _score_shared(self, q: np.ndarray, stack: np.ndarray, block: int) -> jax.Array:
    """Scores of a padded shared pool [K', N, N] through its prepared blocks (prepared on first use)."""
    prepare, score = self._shared_pool_functions(block, q.shape[0])
    if self._tensors is None:
      graphdef = self.graphdef
      self._tensors = jax.jit(lambda p: nnx.merge(graphdef, p).scoring_tensors())(self.params)
    key = (stack.tobytes(), stack.shape, block, q.shape[0])
    prepared = self._pools.pop(key, None)  # re-inserted below: the least recently used entry goes first
    if prepared is None:
      prepared = prepare(self._tensors, jax.device_put(stack, NamedSharding(self.mesh, PartitionSpec(self.AXIS))))
      if len(self._pools) >= self.MAX_POOLS:
        self._pools.pop(next(iter(self._pools)))  # the least recently used
    self._pools[key] = prepared
    return score(self._tensors, prepared, jax.device_put(q, self._replicated))

  def __call__(self, query_emb: Any, adjacency: Any) -> np.ndarray:
    """Logits [B, K] of query embeddings [B, D] against DAGs [K, N, N] or [B, K, N, N].

    The graphs must already be valid (``validate_graph_stack``); only shapes are checked here.
    """
    q = np.asarray(query_emb, np.float32)
    if q.ndim != 2 or q.shape[1] != self.query_dim:
      raise ValueError(f"query embeddings have shape {q.shape}; expected [B, {self.query_dim}]")
    a = np.asarray(adjacency)
    n = self.num_roles
    if a.ndim not in (3, 4) or a.shape[-2:] != (n, n) or (a.ndim == 4 and a.shape[0] != q.shape[0]):
      raise ValueError(f"graphs have shape {a.shape}; expected [K, {n}, {n}] or [{q.shape[0]}, K, {n}, {n}]")
    batch, per_query = q.shape[0], a.ndim == 4
    k = a.shape[-3]
    if batch == 0 or k == 0:
      return np.zeros((batch, k), np.float32)
    block = self.block_size(k, batch)
    step = block * self.num_devices
    padded = -(-k // step) * step
    stack = np.zeros(a.shape[:-3] + (padded, n, n), np.int8)  # padding: empty graphs (valid, discarded)
    stack[..., :k, :, :] = a
    if self._fast_path and not per_query:
      return np.asarray(self._score_shared(q, stack, block))[:, :k]
    spec = PartitionSpec(None, self.AXIS) if per_query else PartitionSpec(self.AXIS)
    out = self._function(block, per_query)(
        self.params, jax.device_put(q, self._replicated), jax.device_put(stack, NamedSharding(self.mesh, spec)))
    return np.asarray(out)[:, :k]
