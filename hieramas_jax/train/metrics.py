"""Evaluation measures computed on the host (numpy)."""

from __future__ import annotations

import numpy as np


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve (Mann-Whitney U, ties count half); NaN when one class is absent."""
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels).reshape(-1).astype(bool)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(s, kind="mergesort")
  ranks = np.empty_like(s)
  sorted_s = s[order]
  i = 0
  while i < len(s):  # average ranks over ties
    j = i
    while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
    i = j + 1
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_per_query_auc(scores, labels, weights=None) -> tuple[float, int]:
  """Mean ROC-AUC over queries [Q, G] that have both classes; returns (mean, queries counted)."""
  s, y = np.asarray(scores), np.asarray(labels)
  w = np.ones_like(s, bool) if weights is None else np.asarray(weights).astype(bool)
  aucs = [roc_auc(s[q][w[q]], y[q][w[q]]) for q in range(s.shape[0])]
  aucs = [a for a in aucs if not np.isnan(a)]
  return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)
