"""The paper's inference rules on the selector's choice (pure numpy, no JAX).

``config.inference`` holds two rules applied to the selector's argmax at
inference (and wherever training compares what inference will run): a cap on
how many roles may be dropped, and proposers rotating over the top models of
one seeded proposer row. Both are deterministic per query (seeded by the
query's uid), never by the batch a query comes in.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

_ROTATION_STREAM = 6  # keeps the proposer-row draws apart from the other seeded streams


def query_key(uid: str) -> int:
  """A stable integer of a query's uid (the same in every process and batch)."""
  return int(hashlib.sha1(uid.encode("utf-8")).hexdigest()[:12], 16)


def rotation_rows(seed: int, problems_or_uids: Sequence, num_roles: int, num_proposers: int) -> np.ndarray:
  """The proposer row [B, R] whose ranking each role's proposers rotate over, seeded per query (uid), never global.

  ``problems_or_uids``: Problems (their ``uid``) or uid strings.
  """
  uids = [q if isinstance(q, str) else q.uid for q in problems_or_uids]
  if num_proposers < 1:
    return np.zeros((len(uids), num_roles), np.int64)
  return np.array([np.random.default_rng([int(seed), _ROTATION_STREAM, query_key(uid)]).integers(
      0, num_proposers, num_roles) for uid in uids], np.int64).reshape(len(uids), num_roles)


def _drop_roles(actions: np.ndarray, masked: np.ndarray, gives_answer: np.ndarray, max_skipped_roles: int) -> None:
  """Applies the skip cap to ``actions`` in place (see ``apply_inference_rules``)."""
  b, _, positions, options = masked.shape
  skip, synth = options - 1, positions - 1
  synth_logits = masked[:, :, synth, :]  # [B, R, M+1]
  top = synth_logits.max(-1, keepdims=True)
  weights = np.exp(synth_logits - top)
  p_skip = weights[..., skip] / weights.sum(-1)
  best_model = synth_logits[..., :skip].argmax(-1)
  has_model = np.isfinite(synth_logits[..., :skip]).any(-1)
  answer_roles = np.asarray(gives_answer, bool)
  for q in range(b):
    wants_skip = np.flatnonzero(actions[q, :, synth] == skip)
    ranked = wants_skip[np.argsort(-p_skip[q, wants_skip], kind="stable")]
    dropped = list(ranked[:max_skipped_roles])
    # A role that cannot run (every model excluded) is dropped whatever the cap says.
    dropped += [int(j) for j in ranked[max_skipped_roles:] if not has_model[q, j]]
    if answer_roles.any() and all(j in dropped for j in np.flatnonzero(answer_roles)):
      keep = [j for j in dropped if answer_roles[j] and has_model[q, j]]
      if keep:
        dropped.remove(min(keep, key=lambda j: p_skip[q, j]))
    for j in wants_skip:
      if j not in dropped:
        actions[q, j, synth] = best_model[q, j]


def _rotate_proposers(actions: np.ndarray, masked: np.ndarray, rotate_top_n: int, rows: np.ndarray) -> None:
  """Applies proposer rotation to ``actions`` in place (see ``apply_inference_rules``)."""
  b, r, positions, options = masked.shape
  skip, synth = options - 1, positions - 1
  if rows.shape != (b, r) or (rows < 0).any() or (rows >= synth).any():
    raise ValueError(f"rotation_row has shape {rows.shape} or values outside [0, {synth}); expected [{b}, {r}] "
                     "proposer indices (rotation_rows gives them)")
  for q in range(b):
    for j in range(r):
      if actions[q, j, synth] == skip:
        continue  # a dropped role makes no calls
      row = masked[q, j, rows[q, j], :skip]
      allowed = np.flatnonzero(np.isfinite(row))
      if allowed.size == 0:
        continue  # every model excluded: the proposers keep their (skip) argmax
      ranked = allowed[np.argsort(-row[allowed], kind="stable")][:rotate_top_n]
      actions[q, j, :synth] = ranked[np.arange(synth) % len(ranked)]


def apply_inference_rules(logits: np.ndarray, valid: np.ndarray, gives_answer: np.ndarray, *,
                          max_skipped_roles: int = -1, rotate_top_n: int = 0,
                          rotation_row: np.ndarray | None = None) -> np.ndarray:
  """The paper's inference choices [B, R, P+1] from selector logits [B, R, P+1, M+1] (option M is ``skip``).

  Every position starts at its argmax over the valid options. Then:

  * Skip cap (``max_skipped_roles`` >= 0): of the roles whose synthesizer argmax
    is ``skip``, at most that many are dropped, those with the highest p(skip)
    (softmax over the synthesizer's valid options) first, and never every
    answer-giving role (the answer role among them with the lowest p(skip) is
    kept). A kept role's synthesizer takes its best non-skip model (it stays
    dropped only when every model is excluded). -1: every such role is dropped,
    possibly all (the decision node then answers alone).
  * Proposer rotation (``rotate_top_n`` = N > 0): in every role that runs, the
    proposers take the top-N allowed models of one proposer row's logits
    (``rotation_row`` [B, R], seeded per query), proposer i getting top[i mod N]
    (fewer when fewer models are allowed). As in the paper's code the ranking
    leaves ``skip`` out: with rotation on every proposer of a running role runs,
    even one whose own argmax was ``skip``. The synthesizer keeps its choice.

  ``gives_answer`` is [R] bool.
  """
  logits = np.asarray(logits, np.float64)
  valid = np.asarray(valid, bool)
  b, r, positions, _ = logits.shape
  masked = np.where(valid, logits, -np.inf)
  actions = masked.argmax(-1)
  if max_skipped_roles >= 0 and b and r:
    _drop_roles(actions, masked, gives_answer, max_skipped_roles)
  if rotate_top_n > 0 and positions > 1:
    rows = np.zeros((b, r), np.int64) if rotation_row is None else np.asarray(rotation_row, np.int64)
    _rotate_proposers(actions, masked, rotate_top_n, rows)
  return actions
