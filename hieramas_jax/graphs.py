"""Directed acyclic graphs over roles: generation, validation, layers, conversion.

Edge convention (everywhere in this project): ``adj[i, j] == 1`` means role i's
output goes into role j's prompt, so messages flow from i to j, and i must run
before j. Adjacency matrices are square 0/1 integer arrays with a zero diagonal.

This module is numpy-only; jraph is imported lazily by the conversion helpers so
host-side code can use it without pulling in JAX.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DensityRange = tuple[float, float]


class InvalidGraphError(ValueError):
  """An adjacency matrix that is not a valid role DAG."""


# ---------------------------------------------------------------------------
# Validation and structure
# ---------------------------------------------------------------------------


def validate_adjacency(adj, num_nodes: int | None = None) -> np.ndarray:
  """Checks that ``adj`` is a DAG adjacency matrix and returns it as int8.

  Raises InvalidGraphError naming the first problem found: wrong shape, an
  entry other than 0/1, a self-loop, or a cycle (with the cycle's nodes).
  """
  a = np.asarray(adj)
  if a.ndim != 2 or a.shape[0] != a.shape[1]:
    raise InvalidGraphError(
        f"adjacency must be a square [N, N] matrix, got shape {a.shape}; "
        "pass one matrix per graph (stacks are validated with validate_pool)")
  if num_nodes is not None and a.shape[0] != num_nodes:
    raise InvalidGraphError(
        f"adjacency has wrong shape {a.shape}: expected [{num_nodes}, {num_nodes}] for {num_nodes} roles")
  if a.dtype == bool:
    a = a.astype(np.int8)
  bad = ~np.isin(a, (0, 1))
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise InvalidGraphError(
        f"adjacency entries must be 0 or 1, found {a[i, j].item()!r} at [{i}, {j}]")
  a = a.astype(np.int8)
  diag = np.flatnonzero(np.diagonal(a))
  if diag.size:
    raise InvalidGraphError(
        f"adjacency has a self-loop at role {int(diag[0])} (adj[{diag[0]}, {diag[0]}] = 1); "
        "a role cannot feed its own prompt")
  cycle = find_cycle(a)
  if cycle is not None:
    path = " -> ".join(str(v) for v in cycle + [cycle[0]])
    raise InvalidGraphError(f"adjacency has a cycle: {path}; role graphs must be acyclic")
  return a


def validate_pool(adjs, num_nodes: int | None = None) -> np.ndarray:
  """Validates a stack [K, N, N] of adjacency matrices; errors name the bad index."""
  a = np.asarray(adjs)
  if a.ndim != 3 or a.shape[1] != a.shape[2]:
    raise InvalidGraphError(f"a graph pool must have shape [K, N, N], got {a.shape}")
  out = np.empty(a.shape, np.int8)
  for k in range(a.shape[0]):
    try:
      out[k] = validate_adjacency(a[k], num_nodes)
    except InvalidGraphError as e:
      raise InvalidGraphError(f"graph {k} of the pool: {e}") from None
  return out


def find_cycle(adj) -> list[int] | None:
  """Returns the nodes of one directed cycle, or None if the graph is acyclic."""
  a = np.asarray(adj)
  n = a.shape[0]
  color = [0] * n  # 0 unvisited, 1 on stack, 2 done
  parent = [-1] * n
  for root in range(n):
    if color[root]:
      continue
    stack = [(root, iter(np.flatnonzero(a[root])))]
    color[root] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        color[node] = 2
        stack.pop()
        continue
      child = int(child)
      if color[child] == 1:  # back edge closes a cycle
        cycle = [node]
        while cycle[-1] != child:
          cycle.append(parent[cycle[-1]])
        return cycle[::-1]
      if color[child] == 0:
        color[child] = 1
        parent[child] = node
        stack.append((child, iter(np.flatnonzero(a[child]))))
  return None


def topological_layers(adj) -> list[list[int]]:
  """Groups roles into layers; roles of one layer depend only on earlier layers.

  Roles in the same layer can run together (Kahn's algorithm, sorted layers).
  """
  a = validate_adjacency(adj)
  indeg = a.sum(axis=0).astype(int)
  remaining = set(range(a.shape[0]))
  layers = []
  while remaining:
    layer = sorted(v for v in remaining if indeg[v] == 0)
    layers.append(layer)
    for v in layer:
      remaining.discard(v)
      indeg -= a[v]
  return layers


def topological_order(adj) -> list[int]:
  """The roles layer by layer (``topological_layers`` flattened): the order every layer runs and lists roles in."""
  return [v for layer in topological_layers(adj) for v in layer]


def density(adj) -> float:
  """Edges over the N(N-1)/2 possible forward edges of an order."""
  a = np.asarray(adj)
  n = a.shape[-1]
  return float(a.sum()) / max(1, n * (n - 1) // 2)


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def edge_count_range(num_nodes: int, density_range: DensityRange) -> tuple[int, int]:
  """Fewest and most edges of a connected DAG over ``num_nodes`` roles in ``density_range``.

  Raises ValueError, saying what to change, when the range is malformed or impossible.
  """
  lo, hi = density_range
  if not (0.0 <= lo <= hi <= 1.0):
    raise ValueError(f"density range must satisfy 0 <= low <= high <= 1, got {density_range}")
  total = num_nodes * (num_nodes - 1) // 2
  if total == 0:
    return 0, 0
  tree = num_nodes - 1
  m_lo = max(tree, math.ceil(lo * total - 1e-9))
  m_hi = min(total, math.floor(hi * total + 1e-9))
  if m_lo > m_hi:
    raise ValueError(
        f"density range {density_range} is impossible for {num_nodes} roles: a connected DAG needs at "
        f"least {tree} of {total} forward edges (density {tree / total:.3f}), and the range allows at "
        f"most {m_hi}; raise the upper density bound")
  return m_lo, m_hi


def random_dag(rng: np.random.Generator, num_nodes: int, density_range: DensityRange = (0.0, 1.0)) -> np.ndarray:
  """One random connected DAG, generated as the paper does.

  A random topological order; a random spanning tree (each later node gets an
  edge from a uniformly chosen earlier node); then extra forward edges up to an
  edge count drawn uniformly from those whose density lies in the range.
  """
  m_lo, m_hi = edge_count_range(num_nodes, density_range)
  order = rng.permutation(num_nodes)
  adj = np.zeros((num_nodes, num_nodes), np.int8)
  for pos in range(1, num_nodes):
    parent = order[rng.integers(0, pos)]
    adj[parent, order[pos]] = 1
  target = int(rng.integers(m_lo, m_hi + 1))
  extra = target - (num_nodes - 1) if num_nodes else 0
  if extra > 0:
    # Forward edges of the order (earlier -> later) not yet in the tree.
    iu, ju = np.triu_indices(num_nodes, k=1)
    src, dst = order[iu], order[ju]
    free = np.flatnonzero(adj[src, dst] == 0)
    chosen = rng.choice(free, size=extra, replace=False)
    adj[src[chosen], dst[chosen]] = 1
  return adj


def dag_pool(
    seed: int,
    num_nodes: int,
    pool_size: int,
    density_range: DensityRange = (0.0, 1.0),
    max_attempts: int | None = None,
    allow_fewer: bool = False,
) -> np.ndarray:
  """``pool_size`` distinct random DAGs [K, N, N], reproducible from ``seed``.

  With ``allow_fewer`` a request larger than the number of distinct DAGs that
  can be found (few roles) returns those found instead of raising.
  """
  if pool_size < 1:
    raise ValueError(f"pool_size must be >= 1, got {pool_size}")
  edge_count_range(num_nodes, density_range)  # fail early on an impossible range
  rng = np.random.default_rng(seed)
  max_attempts = max_attempts or max(1000, 50 * pool_size)
  seen: dict[bytes, np.ndarray] = {}
  for _ in range(max_attempts):
    adj = random_dag(rng, num_nodes, density_range)
    seen.setdefault(adj.tobytes(), adj)
    if len(seen) == pool_size:
      return np.stack(list(seen.values()))
  if allow_fewer:
    return np.stack(list(seen.values()))
  raise ValueError(
      f"found only {len(seen)} distinct DAGs over {num_nodes} roles with density in {density_range} "
      f"after {max_attempts} draws, fewer than pool_size={pool_size}; lower the pool size or widen the range")


# ---------------------------------------------------------------------------
# Named topologies
# ---------------------------------------------------------------------------


def _order(num_nodes: int, order: Sequence[int] | None) -> list[int]:
  if order is None:
    return list(range(num_nodes))
  order = [int(v) for v in order]
  if sorted(order) != list(range(num_nodes)):
    raise ValueError(f"order must be a permutation of 0..{num_nodes - 1}, got {order}")
  return order


def empty(num_nodes: int) -> np.ndarray:
  """No edges: every role works alone."""
  return np.zeros((num_nodes, num_nodes), np.int8)


def full(num_nodes: int, order: Sequence[int] | None = None) -> np.ndarray:
  """All forward edges of an order: every role sees every earlier role."""
  o = _order(num_nodes, order)
  adj = empty(num_nodes)
  for a in range(num_nodes):
    for b in range(a + 1, num_nodes):
      adj[o[a], o[b]] = 1
  return adj


def chain(num_nodes: int, order: Sequence[int] | None = None) -> np.ndarray:
  """Each role sees only the one before it."""
  o = _order(num_nodes, order)
  adj = empty(num_nodes)
  for a in range(num_nodes - 1):
    adj[o[a], o[a + 1]] = 1
  return adj


def star(num_nodes: int, center: int = 0) -> np.ndarray:
  """The center role's output goes to every other role."""
  if not 0 <= center < num_nodes:
    raise ValueError(f"center must be a role index in [0, {num_nodes}), got {center}")
  adj = empty(num_nodes)
  adj[center, :] = 1
  adj[center, center] = 0
  return adj


def layered(depth: int, width: int) -> np.ndarray:
  """NeuroMAS shape: ``depth`` layers of ``width`` roles, each layer fully fed by the previous.

  Role index = layer * width + position.
  """
  if depth < 1 or width < 1:
    raise ValueError(f"layered needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
  n = depth * width
  adj = empty(n)
  for layer in range(depth - 1):
    src = slice(layer * width, (layer + 1) * width)
    dst = slice((layer + 1) * width, (layer + 2) * width)
    adj[src, dst] = 1
  return adj


def named_topology(name: str, num_nodes: int, **kwargs) -> np.ndarray:
  """Builds a topology by name: full, chain, star, layered, empty, random."""
  if name == "full":
    return full(num_nodes, kwargs.get("order"))
  if name == "chain":
    return chain(num_nodes, kwargs.get("order"))
  if name == "star":
    return star(num_nodes, kwargs.get("center", 0))
  if name == "empty":
    return empty(num_nodes)
  if name == "layered":
    width = kwargs.get("width")
    if not width or num_nodes % width:
      raise ValueError(f"layered over {num_nodes} roles needs a width that divides it, got width={width}")
    return layered(num_nodes // width, width)
  if name == "random":
    rng = np.random.default_rng(kwargs.get("seed", 0))
    return random_dag(rng, num_nodes, kwargs.get("density_range", (0.0, 1.0)))
  raise ValueError(f"unknown topology {name!r}; choose one of: full, chain, star, layered, empty, random")


# ---------------------------------------------------------------------------
# Padding and jraph conversion
# ---------------------------------------------------------------------------


def pad_adjacency(adj, num_nodes: int) -> np.ndarray:
  """Pads [.., n, n] adjacency with isolated roles to [.., num_nodes, num_nodes]."""
  a = np.asarray(adj)
  n = a.shape[-1]
  if n > num_nodes:
    raise ValueError(f"cannot pad a graph of {n} roles down to {num_nodes}")
  pad = [(0, 0)] * (a.ndim - 2) + [(0, num_nodes - n), (0, num_nodes - n)]
  return np.pad(a, pad)


def to_graphs_tuple(adj, nodes=None, edges=None):
  """A jraph.GraphsTuple with one edge per nonzero entry (sender i, receiver j)."""
  import jraph  # pylint: disable=g-import-not-at-top

  a = validate_adjacency(adj)
  senders, receivers = np.nonzero(a)
  n = a.shape[0]
  return jraph.GraphsTuple(
      nodes=nodes,
      edges=edges,
      senders=senders.astype(np.int32),
      receivers=receivers.astype(np.int32),
      n_node=np.array([n], np.int32),
      n_edge=np.array([senders.size], np.int32),
      globals=None)


def from_graphs_tuple(graph) -> np.ndarray:
  """The adjacency matrix of a single-graph jraph.GraphsTuple."""
  n = int(np.asarray(graph.n_node).sum())
  adj = np.zeros((n, n), np.int8)
  adj[np.asarray(graph.senders), np.asarray(graph.receivers)] = 1
  return adj


def dense_edge_index(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """Senders and receivers of every ordered pair (i, j): a static edge list.

  With per-edge weights taken from an adjacency matrix, this turns any graph of
  N roles into a fixed-shape GraphsTuple, which is what lets jraph code be
  jitted once and vmapped over stacks of adjacency matrices.
  """
  senders, receivers = np.meshgrid(np.arange(num_nodes), np.arange(num_nodes), indexing="ij")
  return senders.reshape(-1).astype(np.int32), receivers.reshape(-1).astype(np.int32)
