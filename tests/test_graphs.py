"""Graph generation, validation, layers and jraph conversion; the report draws with the same layers."""

import numpy as np
import pytest

from hieramas_jax import graphs


@pytest.mark.parametrize("n,lo,hi", [(3, 0.0, 1.0), (5, 0.2, 0.6), (8, 0.3, 0.5), (8, 0.0, 1.0)])
def test_pool_is_acyclic_unique_in_density_range_and_connected(n, lo, hi):
  k = 10 if n == 3 else 50
  pool = graphs.dag_pool(seed=3, num_nodes=n, pool_size=k, density_range=(lo, hi))
  assert pool.shape == (k, n, n)
  assert len({g.tobytes() for g in pool}) == k
  total = n * (n - 1) // 2
  for g in pool:
    graphs.validate_adjacency(g)
    assert graphs.find_cycle(g) is None
    # The spanning tree keeps the graph weakly connected with >= n-1 edges.
    assert g.sum() >= n - 1
    undirected = (g + g.T) > 0
    reach = {0}
    frontier = [0]
    while frontier:
      v = frontier.pop()
      for u in np.flatnonzero(undirected[v]):
        if u not in reach:
          reach.add(int(u))
          frontier.append(int(u))
    assert len(reach) == n
    d = g.sum() / total
    assert max(lo, (n - 1) / total) - 1e-9 <= d <= hi + 1e-9


def test_pool_reproducible_from_seed_and_differs_across_seeds():
  a = graphs.dag_pool(7, 6, 40, (0.3, 0.7))
  b = graphs.dag_pool(7, 6, 40, (0.3, 0.7))
  c = graphs.dag_pool(8, 6, 40, (0.3, 0.7))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_density_range_spread_follows_the_range():
  pool = graphs.dag_pool(0, 8, 200, (0.25, 0.9))
  d = pool.reshape(200, -1).sum(-1) / 28
  assert d.min() < 0.35 and d.max() > 0.8  # draws cover the range, not one edge count


def test_impossible_requests_raise_clear_errors():
  with pytest.raises(ValueError, match="impossible"):
    graphs.dag_pool(0, 8, 5, (0.0, 0.1))  # a tree over 8 roles has density 0.25
  with pytest.raises(ValueError, match="distinct DAGs"):
    graphs.dag_pool(0, 2, 5)  # only two connected DAGs over 2 roles
  with pytest.raises(ValueError, match="0 <= low <= high <= 1"):
    graphs.dag_pool(0, 4, 5, (0.8, 0.2))


@pytest.mark.parametrize("adj,message", [
    (np.zeros((3, 4)), "square"),
    (np.zeros((2, 3, 3)), "square"),
    (np.array([[0, 2], [0, 0]]), r"0 or 1, found 2 at \[0, 1\]$"),  # the value as written, not np.int64(2)
    (np.array([[0, 0], [0.5, 0]]), r"0 or 1, found 0.5 at \[1, 0\]$"),
    (np.array([[1, 0], [0, 0]]), "self-loop at role 0"),
    (np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]]), "cycle: 0 -> 1 -> 2 -> 0"),
])
def test_validator_names_each_defect(adj, message):
  with pytest.raises(graphs.InvalidGraphError, match=message):
    graphs.validate_adjacency(adj)


def test_validator_checks_expected_size_and_pool_index():
  with pytest.raises(graphs.InvalidGraphError, match="expected \\[4, 4\\]"):
    graphs.validate_adjacency(np.zeros((3, 3)), num_nodes=4)
  pool = np.stack([graphs.chain(3), np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])])
  with pytest.raises(graphs.InvalidGraphError, match="graph 1 of the pool.*cycle"):
    graphs.validate_pool(pool)


def test_named_topologies():
  np.testing.assert_array_equal(graphs.chain(3), [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
  np.testing.assert_array_equal(graphs.full(3, order=[2, 0, 1]), [[0, 1, 0], [0, 0, 0], [1, 1, 0]])
  np.testing.assert_array_equal(graphs.star(3, center=1), [[0, 0, 0], [1, 0, 1], [0, 0, 0]])
  assert graphs.empty(4).sum() == 0
  lay = graphs.layered(depth=3, width=2)
  assert lay.shape == (6, 6) and lay.sum() == 2 * 2 * 2
  assert graphs.topological_layers(lay) == [[0, 1], [2, 3], [4, 5]]
  for name in ("full", "chain", "star", "empty", "random"):
    graphs.validate_adjacency(graphs.named_topology(name, 5))
  with pytest.raises(ValueError, match="unknown topology"):
    graphs.named_topology("ring", 5)


def test_order_and_layers_refuse_cycles_and_handle_no_roles():
  with pytest.raises(graphs.InvalidGraphError, match="cycle: 1 -> 2 -> 1"):
    graphs.topological_layers([[0, 0, 0], [0, 0, 1], [0, 1, 0]])
  assert graphs.topological_layers(np.zeros((0, 0), np.int8)) == []
  assert graphs.topological_order(np.zeros((0, 0), np.int8)) == []
  # Layers, each sorted: 0 -> 3 and 1 -> 2 give [0, 1] then [2, 3].
  assert graphs.topological_order([[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]) == [0, 1, 2, 3]


def test_topological_layers_respect_edges():
  pool = graphs.dag_pool(1, 7, 30, (0.2, 0.8))
  for g in pool:
    layers = graphs.topological_layers(g)
    where = {v: i for i, layer in enumerate(layers) for v in layer}
    assert sorted(where) == list(range(7))
    for i, j in zip(*np.nonzero(g)):
      assert where[i] < where[j]
    # Every role after the first layer has a predecessor in the layer just before.
    for i, layer in enumerate(layers[1:], start=1):
      for v in layer:
        assert any(where[int(u)] == i - 1 for u in np.flatnonzero(g[:, v]))


def test_graphs_tuple_round_trip_and_direction():
  g = graphs.dag_pool(2, 6, 1, (0.3, 0.6))[0]
  gt = graphs.to_graphs_tuple(g)
  np.testing.assert_array_equal(graphs.from_graphs_tuple(gt), g)
  for s, r in zip(gt.senders, gt.receivers):
    assert g[s, r] == 1  # sender i feeds receiver j


def test_pad_adjacency():
  p = graphs.pad_adjacency(graphs.chain(3), 5)
  assert p.shape == (5, 5) and p[3:].sum() == 0 and p[:, 3:].sum() == 0
  with pytest.raises(ValueError, match="cannot pad"):
    graphs.pad_adjacency(graphs.chain(6), 5)


def test_allow_fewer_returns_every_distinct_graph_found():
  pool = graphs.dag_pool(0, 2, 5, allow_fewer=True)
  assert pool.shape == (2, 2, 2)
  assert {g.tobytes() for g in pool} == {graphs.chain(2).tobytes(), graphs.chain(2, order=[1, 0]).tobytes()}


def test_report_refuses_a_view_that_is_not_a_dag_before_writing_anything(tmp_path):
  from hieramas_jax import report  # pylint: disable=g-import-not-at-top
  view = report.TopologyView(question="q", roles=["A", "B", "C"], assignment=[["m"], ["m"], ["m"]],
                             adjacency=np.array([[0, 1, 0], [0, 0, 1], [0, 1, 0]]), decision_model="d")
  with pytest.raises(graphs.InvalidGraphError, match="topology view 0: adjacency has a cycle: 1 -> 2 -> 1"):
    report.write_report(tmp_path / "out", [], [view])
  assert not (tmp_path / "out").exists()
