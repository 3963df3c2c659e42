"""Per-problem traits of an anchored world: hardness and shared wrong answers.

Every problem gets, by a hash of (seed, uid), a hardness (a logit shift shared by
all models) and a wrong-answer profile (how a wrong answer splits over the
problem's k distractors and an answer of one's own). Both come from small
discrete sets, so the oracle's expectation over problems is an exact finite sum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Latent:
  """A problem's hidden traits in an anchored world.

  Attributes:
    shift: logit added to every model's skill on this problem (hardness, shared by all models).
    weights: how its wrong answers split, before reading anything: distractor 1..k, then
      a wrong answer of the model's own (one no other output shares).
    prob: the share of problems with these traits.
  """

  shift: float
  weights: tuple[float, ...]
  prob: float


def wrong_split(weights: Sequence[float], distractors_seen: Sequence[int]) -> list[float]:
  """How a wrong answer splits over distractor 1..k and an answer of its own, having read
  ``distractors_seen[j]`` candidates stating distractor j.

  A Polya urn: each read distractor counts as much as the problem's whole own pull
  (weights sum to 1), so a model that errs after reading a wrong answer often repeats it.
  Wrong answers of a reader's own are never copied: their values are not shared by design.
  """
  seen = float(sum(distractors_seen))
  if not seen:
    return list(weights)
  out = [(w + n) / (1.0 + seen) for w, n in zip(weights[:-1], distractors_seen)]
  out.append(weights[-1] / (1.0 + seen))
  return out


@dataclasses.dataclass(frozen=True)
class AnswerModel:
  """Per-problem hardness and shared wrong answers (what makes majority voting realistic).

  Every problem gets, by a hash of (seed, uid), one hardness (a logit shift shared by
  all models: hard problems are hard for everyone) and one wrong-answer profile (how a
  wrong answer splits over the problem's k distractors and an answer of one's own).
  Both come from small discrete sets, so the oracle's expectation over problems is an
  exact finite sum.

  Attributes:
    hardness: (logit shift, share of problems) pairs; shares sum to 1.
    profiles: (weights over distractor 1..k then 'own', share of problems) pairs.
    seed: seed of the per-problem draws.
  """

  hardness: tuple[tuple[float, float], ...]
  profiles: tuple[tuple[tuple[float, ...], float], ...]
  seed: int = 0

  def __post_init__(self):
    for name, pairs in (("hardness", self.hardness), ("profiles", self.profiles)):
      if not pairs or abs(sum(p for _, p in pairs) - 1.0) > 1e-9 or min(p for _, p in pairs) < 0:
        raise ValueError(f"AnswerModel.{name} shares must be non-negative and sum to 1; got {pairs}")
    sizes = {len(w) for w, _ in self.profiles}
    if len(sizes) != 1:
      raise ValueError(f"every wrong-answer profile needs the same length (k distractors + 1); got {sizes}")
    for weights, _ in self.profiles:
      if abs(sum(weights) - 1.0) > 1e-9 or min(weights) < 0:
        raise ValueError(f"wrong-answer weights {weights} must be non-negative and sum to 1")

  @property
  def num_distractors(self) -> int:
    return len(self.profiles[0][0]) - 1

  @property
  def num_values(self) -> int:
    """Answer values tracked: right, k distractors, own wrong answers."""
    return self.num_distractors + 2

  def latents(self) -> list[Latent]:
    """Every combination of traits with its share of problems."""
    return [Latent(shift, tuple(weights), ph * pg) for shift, ph in self.hardness for weights, pg in self.profiles]

  def latent_of(self, uid: str) -> Latent:
    """The traits of problem ``uid`` (deterministic)."""
    digest = hashlib.blake2b(f"{self.seed}|latent|{uid}".encode(), digest_size=16).digest()
    u_h = (int.from_bytes(digest[:8], "little") + 0.5) / 2**64
    u_g = (int.from_bytes(digest[8:], "little") + 0.5) / 2**64
    shift = _pick_by_share(self.hardness, u_h)
    weights = _pick_by_share(self.profiles, u_g)
    return Latent(shift, tuple(weights), 1.0)


def _pick_by_share(pairs: Sequence[tuple[Any, float]], u: float) -> Any:
  total = 0.0
  for value, share in pairs:
    total += share
    if u < total:
      return value
  return pairs[-1][0]


def normal_hardness(sd: float, nodes: int = 5) -> tuple[tuple[float, float], ...]:
  """A N(0, sd^2) logit shift as Gauss-Hermite nodes and weights (exact for the oracle's sums)."""
  x, w = np.polynomial.hermite.hermgauss(nodes)
  return tuple((float(math.sqrt(2.0) * sd * xi), float(wi / math.sqrt(math.pi))) for xi, wi in zip(x, w))


# Per-problem hardness spread (logits, on top of subject and level): per-problem
# pass rates of real models are strongly bimodal (many problems always or never
# solved), which is what bounds the gain of majority voting. With 2.5 a 5-sample
# vote gains 0.09 for GPT-4o-mini on MATH (0.14 with 1.5: more than published
# self-consistency gains at 5 samples suggest).
ANCHORED_HARDNESS_SD = 2.5

# Wrong-answer profiles per benchmark: (weights over distractors then 'own', share).
# MATH: two common wrong values per problem, from one dominant trap to scattered
# errors. MMLU: the three wrong options, unevenly attractive, never an answer of
# one's own. HumanEval: one broken implementation (the task renders no other).
WRONG_PROFILES: dict[str, tuple[tuple[tuple[float, ...], float], ...]] = {
    "math": (((0.6, 0.1, 0.3), 0.4), ((0.35, 0.25, 0.4), 0.3), ((0.1, 0.05, 0.85), 0.3)),
    "mmlu_redux": (((0.8, 0.15, 0.05, 0.0), 0.5), ((0.6, 0.3, 0.1, 0.0), 0.3), ((0.4, 0.35, 0.25, 0.0), 0.2)),
    "humaneval": (((1.0, 0.0), 1.0),),
}

