"""Stage-2 labels: which queries teach a ranking, and when no classifier can be trained."""

import numpy as np

from hieramas_jax.train import stage2


def _data(labels, valid):
  labels, valid = np.asarray(labels, np.int8), np.asarray(valid, bool)
  z = np.zeros(labels.shape)
  return stage2.GraphData(np.zeros(labels.shape + (3, 3), np.int8), z, labels.astype(bool), valid, labels, z)


def test_queries_with_one_class_get_zero_weight():
  data = _data([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1]], [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 1]])
  w = stage2.contrast_weights(data)
  np.testing.assert_array_equal(w, [[0, 0, 0], [1, 1, 1], [0, 0, 0], [0, 0, 0]])


def test_invalid_pairs_do_not_count_as_negatives():
  data = _data([[1, 0, 0]], [[1, 0, 1]])
  np.testing.assert_array_equal(stage2.contrast_weights(data), [[1, 0, 1]])


def test_all_tied_labels_give_a_reason_not_a_classifier():
  tied = _data([[1, 1], [1, 1]], [[1, 1], [1, 1]])
  reason = stage2.no_positives_reason(tied, "train.npz")
  assert "both a positive and a negative" in reason and "train.npz" in reason
  assert "no positive label" in stage2.no_positives_reason(_data([[0, 0]], [[1, 1]]), "x")
  assert stage2.no_positives_reason(_data([[1, 0]], [[1, 1]]), "x") == ""


def test_label_rule_ties_on_the_floor_make_every_solved_dag_positive():
  rewards = np.array([[0.5, 0.5, 0.5, -1.0]])
  solved = np.array([[True, True, True, False]])
  labels = stage2.label_graphs(rewards, solved, np.ones_like(solved), top_k=2)
  np.testing.assert_array_equal(labels, [[1, 1, 1, 0]])
