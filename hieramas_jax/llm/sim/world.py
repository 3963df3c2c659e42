"""The hidden truth of a simulated pool: models, skills, collaboration, and the two worlds.

``SimWorld.p_correct`` is the one probability model that the text simulator
(``backend``) and the oracle (``oracle``) share; see the package docstring.
``make_world`` builds the world named by config (``llm.sim_world``): the
invented one (``default_world``) or the one anchored to published scores
(``anchored_world``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from hieramas_jax.llm import sim_facts
from hieramas_jax.llm.base import UnknownModelError
from hieramas_jax.llm.pool import PAPER_POOL, ModelSpec
from hieramas_jax.llm.sim.answers import (ANCHORED_HARDNESS_SD, WRONG_PROFILES, AnswerModel, Latent, normal_hardness,
                                          wrong_split)
from hieramas_jax.tasks.base import Problem

LEVELS = (1, 2, 3, 4, 5)
_UNKNOWN_LEVEL = 3  # problems with level 0 (unknown) count as medium


@dataclasses.dataclass(frozen=True)
class SimModel:
  """A simulated model: price, speed, verbosity and synthesizer strength."""

  name: str
  price_in_per_m: float
  price_out_per_m: float
  latency_s: float = 0.5  # mean seconds per call
  pick: float = 1.0  # weight of the candidate answers it reads (0: ignores them)
  completion_tokens: tuple[int, int] = (150, 400)  # uniform range, inclusive

  @property
  def expected_completion_tokens(self) -> float:
    return (self.completion_tokens[0] + self.completion_tokens[1]) / 2.0

  def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
    return (prompt_tokens * self.price_in_per_m + completion_tokens * self.price_out_per_m) / 1e6


@dataclasses.dataclass(frozen=True)
class SkillTable:
  """Logit of a model solving a problem alone, per (model, subject, level).

  The logit is ``ability[model] + offset(model, subject) - level_slope * (level - 3)``
  unless ``table`` gives it outright. Offsets are ``offsets[(model, subject)]`` when
  given, else a seeded draw with std ``subject_spread`` (so unseen subjects work
  and every model has strong and weak subjects). ``table[(model, subject)]`` holds
  five logits (levels 1..5) and overrides everything; the subject ``"*"`` there
  matches any subject of that model that has no entry of its own.
  """

  ability: Mapping[str, float]
  level_slope: float = 0.5
  subject_spread: float = 0.0
  offsets: Mapping[tuple[str, str], float] = dataclasses.field(default_factory=dict)
  table: Mapping[tuple[str, str], Sequence[float]] = dataclasses.field(default_factory=dict)
  seed: int = 0

  def __post_init__(self):
    for key, row in self.table.items():
      if len(row) != len(LEVELS):
        raise ValueError(f"skill table row {key} has {len(row)} logits; give one per level {LEVELS}")
    object.__setattr__(self, "_memo", {})

  @classmethod
  def from_array(cls, models: Sequence[str], subjects: Sequence[str], logits: Any,
                 **kwargs: Any) -> "SkillTable":
    """A table from an array [M, S, 5] of logits (levels 1..5)."""
    arr = np.asarray(logits, dtype=float)
    if arr.shape != (len(models), len(subjects), len(LEVELS)):
      raise ValueError(f"logits have shape {arr.shape}; expected {(len(models), len(subjects), len(LEVELS))}")
    table = {(m, s): tuple(arr[i, j]) for i, m in enumerate(models) for j, s in enumerate(subjects)}
    return cls(ability=dict(kwargs.pop("ability", {})), table=table, **kwargs)

  def _seeded_offset(self, model: str, subject: str) -> float:
    if self.subject_spread == 0.0:
      return 0.0
    digest = hashlib.blake2b(f"{self.seed}|{model}|{subject}".encode(), digest_size=8).digest()
    u1, u2 = (int.from_bytes(digest[:4], "little") + 0.5) / 2**32, (int.from_bytes(digest[4:], "little") + 0.5) / 2**32
    return self.subject_spread * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

  def logit(self, model: str, subject: str, level: int) -> float:
    key = (model, subject, level)
    memo = self._memo  # type: ignore[attr-defined]
    value = memo.get(key)
    if value is not None:
      return value
    lv = level if level in LEVELS else _UNKNOWN_LEVEL
    row = self.table.get((model, subject)) or self.table.get((model, "*"))
    if row is not None:
      value = float(row[lv - 1])
    else:
      if model not in self.ability:
        if any(k[0] == model for k in self.table):
          raise ValueError(f"no skill for model {model!r} on subject {subject!r}: add a table row for it, a "
                           f"({model!r}, '*') row, or an ability for the model")
        known = sorted(set(self.ability) | {k[0] for k in self.table})
        raise UnknownModelError(f"the skill table has no model {model!r}; it knows {known}")
      offset = self.offsets.get((model, subject))
      if offset is None:
        offset = self._seeded_offset(model, subject)
      value = float(self.ability[model]) + offset - self.level_slope * (lv - _UNKNOWN_LEVEL)
    memo[key] = value
    return value


def _sigmoid(z: float) -> float:
  if z >= 0:
    return 1.0 / (1.0 + math.exp(-z))
  e = math.exp(z)
  return e / (1.0 + e)


@dataclasses.dataclass(frozen=True)
class RoleEffect:
  """How a role changes its calls' chances: ``solo`` is added to the skill logit and
  ``gain_scale`` multiplies the collaboration term (what the role makes of the
  candidate answers it reads). An Inspector, say, is weak with nothing to inspect
  (solo < 0) and strong with a solution in front of it (gain_scale > 1)."""

  solo: float = 0.0
  gain_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class SimWorld:
  """The hidden truth of a simulated pool (see the module docstring for the model).

  Attributes:
    models: the simulated models by name.
    skill: solo-solve logits per (model, subject, level).
    gain: logit gained per log(1 + correct candidates seen), times the reader's pick.
    mislead: logit lost per log(1 + wrong candidates seen), times the reader's pick.
    seed: seed of every call's RNG.
    error_rate: chance that a call fails (an error response; the oracle ignores it).
    role_effects: per role name, a RoleEffect on that role's calls (proposers and
      synthesizer); roles not named, and the decision node, have none.
  """

  models: Mapping[str, SimModel]
  skill: SkillTable
  gain: float = 1.5
  mislead: float = 0.75
  seed: int = 0
  error_rate: float = 0.0
  role_effects: Mapping[str, RoleEffect] = dataclasses.field(default_factory=dict)
  answers: AnswerModel | None = None

  def __post_init__(self):
    missing = [m for m in self.models if m not in self.skill.ability and
               not any(k[0] == m for k in self.skill.table)]
    if missing:
      raise ValueError(f"the skill table has no entry for model(s) {missing}; give each model an ability "
                       "or table rows")

  def p_correct(self, model: str, subject: str, level: int, n_correct: int, n_wrong: int,
                role: str | None = None, hardness: float = 0.0) -> float:
    """Chance that ``model`` answers right having read these candidate answers, in ``role``.

    ``hardness`` is the problem's own logit shift (anchored worlds; 0 in the invented one).
    """
    m = self.models[model]
    effect = self.role_effects.get(role) if role is not None else None
    z = self.skill.logit(model, subject, level) + hardness + (effect.solo if effect else 0.0)
    if n_correct or n_wrong:
      scale = effect.gain_scale if effect else 1.0
      z += scale * m.pick * (self.gain * math.log1p(n_correct) - self.mislead * math.log1p(n_wrong))
    return _sigmoid(z)

  def value_distribution(self, model: str, subject: str, level: int, counts: Sequence[int],
                         role: str | None, latent: Latent) -> list[float]:
    """Chances of each answer value (anchored worlds): [right, distractor 1..k, a wrong answer of its own].

    ``counts`` holds how many candidates of each of those values the prompt already
    holds (own wrong answers all count in the last slot).
    """
    n_wrong = sum(counts) - counts[0]
    p = self.p_correct(model, subject, level, counts[0], n_wrong, role, latent.shift)
    return [p] + [(1.0 - p) * q for q in wrong_split(latent.weights, counts[1:-1])]

  def with_models(self, names: Sequence[str]) -> "SimWorld":
    """The same world restricted to some models."""
    unknown = [n for n in names if n not in self.models]
    if unknown:
      raise UnknownModelError(f"unknown model(s) {unknown}; the world has {sorted(self.models)}")
    return dataclasses.replace(self, models={n: self.models[n] for n in names})


# Hidden traits of the paper's pool in the default world: (ability at level 3,
# pick, latency seconds, completion token range). Invented but ordered like
# public benchmark results: reasoning models are stronger, slower and wordier.
_DEFAULT_TRAITS: dict[str, tuple[float, float, float, tuple[int, int]]] = {
    "Qwen3-8B": (0.3, 0.8, 0.6, (200, 500)),
    "Qwen3-Next-80B-A3B": (1.4, 1.1, 0.8, (250, 550)),
    "Llama-3.1-8B": (-0.8, 0.5, 0.3, (100, 250)),
    "DeepSeek-V3.2": (1.8, 1.3, 1.5, (200, 500)),
    "Gemma-3-27B": (0.4, 0.9, 0.6, (150, 350)),
    "GPT-5-nano": (0.9, 0.9, 1.0, (300, 600)),
    "GPT-5-mini": (2.0, 1.4, 1.2, (300, 600)),
    "GPT-4o-mini": (0.2, 1.0, 0.5, (120, 300)),
}
_AVERAGE_TRAITS = (0.5, 1.0, 0.6, (150, 400))  # models outside the paper's pool


def _traits(spec: ModelSpec) -> tuple[SimModel, float]:
  """The simulated model of ``spec`` (its prices, the invented traits) and its invented ability."""
  ability, pick, latency, tokens = _DEFAULT_TRAITS.get(spec.name, _AVERAGE_TRAITS)
  return SimModel(spec.name, spec.price_in_per_m, spec.price_out_per_m, latency, pick, tokens), ability


def default_world(*, seed: int = 0, pool: Sequence[ModelSpec] = PAPER_POOL, subject_spread: float = 0.6,
                  level_slope: float = 0.5, **kwargs: Any) -> SimWorld:
  """The paper's pool with its prices and invented but plausible skills.

  Models of ``pool`` not in the paper's pool get average traits.
  """
  models, ability = {}, {}
  for spec in pool:
    models[spec.name], ability[spec.name] = _traits(spec)
  skill = SkillTable(ability=ability, level_slope=level_slope, subject_spread=subject_spread, seed=seed)
  return SimWorld(models=models, skill=skill, seed=seed, **kwargs)


def _mix_of(problems: Iterable[Problem]) -> dict[tuple[str, int], int]:
  mix: dict[tuple[str, int], int] = {}
  for p in problems:
    mix[(p.subject, p.level)] = mix.get((p.subject, p.level), 0) + 1
  return mix


def mixture_single_call(world: SimWorld, model: str, mix: Mapping[tuple[str, int], float]) -> float:
  """A model's single-call accuracy over a (subject, level) mix, averaged over problem traits."""
  latents = world.answers.latents() if world.answers else [Latent(0.0, (1.0,), 1.0)]
  total = sum(mix.values())
  return sum(weight / total * lat.prob * world.p_correct(model, s, lv, 0, 0, None, lat.shift)
             for (s, lv), weight in mix.items() for lat in latents)


def anchored_world(task: str = "math", *, seed: int = 0, pool: Sequence[ModelSpec] = PAPER_POOL,
                   problems: Iterable[Problem] | None = None, mix: Mapping[tuple[str, int], float] | None = None,
                   hardness_sd: float = ANCHORED_HARDNESS_SD, subject_spread: float = 0.3,
                   level_slope: float = 0.5, **kwargs: Any) -> SimWorld:
  """The paper's pool with single-call accuracies set from published scores (``sim_facts``).

  Each model's skill logit is ``ability + subject offset - level_slope * (level - 3) +
  problem hardness``; its ``ability`` is solved for so that the mean of p_correct over
  the task's (subject, level) mix and the problem traits equals the published
  single-call score of ``sim_facts.FACTS`` for the task's benchmark. Wrong answers
  are correlated (``AnswerModel``). Prices, latencies, lengths and pick strengths are
  the invented world's.

  Args:
    task: a task name or benchmark (``sim_facts.benchmark_of``).
    seed: seed of subject offsets, problem traits and call draws.
    pool: the models; each needs a fact for the benchmark.
    problems: the problems the world will be asked about; their (subject, level) mix
      is calibrated on. Default: ``mix``, else the benchmark's published test mix.
    mix: (subject, level) -> weight, used when ``problems`` is None.
    hardness_sd, subject_spread, level_slope: the difficulty structure.
    **kwargs: more SimWorld fields (role_effects, gain, error_rate...).
  """
  benchmark = sim_facts.benchmark_of(task)
  if problems is not None:
    mix = _mix_of(problems)
  if not mix:
    mix = sim_facts.BENCHMARK_MIX[benchmark]
  answers = AnswerModel(normal_hardness(hardness_sd), WRONG_PROFILES[benchmark], seed=seed)
  models = {spec.name: _traits(spec)[0] for spec in pool}
  # Skills are linear in the ability: solve for it on the logits of a zero-ability table.
  base = SkillTable(ability={m: 0.0 for m in models}, level_slope=level_slope, subject_spread=subject_spread,
                    seed=seed)
  total = float(sum(mix.values()))
  ability = {}
  for name in models:
    target = sim_facts.fact(name, benchmark).score / 100.0
    terms = [(weight / total * lat.prob, base.logit(name, subject, level) + lat.shift)
             for (subject, level), weight in mix.items() for lat in answers.latents()]
    lo, hi = -30.0, 30.0
    for _ in range(100):  # bisection: the mixture accuracy rises with the ability
      mid = (lo + hi) / 2.0
      if sum(w * _sigmoid(mid + z) for w, z in terms) < target:
        lo = mid
      else:
        hi = mid
    ability[name] = (lo + hi) / 2.0
  skill = SkillTable(ability=ability, level_slope=level_slope, subject_spread=subject_spread, seed=seed)
  return SimWorld(models=models, skill=skill, seed=seed, answers=answers, **kwargs)


WORLDS = ("invented", "anchored")


def make_world(kind: str = "invented", *, task: str | None = None, problems: Iterable[Problem] | None = None,
               **kwargs: Any) -> SimWorld:
  """The simulated world named by config (``llm.sim_world``): 'invented' or 'anchored'.

  ``task`` and ``problems`` are what the anchored world is calibrated on; the
  invented world ignores them.
  """
  if kind == "invented":
    return default_world(**kwargs)
  if kind == "anchored":
    if task is None:
      raise ValueError("the anchored world needs the task name (its published scores depend on the benchmark)")
    return anchored_world(task, problems=problems, **kwargs)
  raise ValueError(f"unknown simulated world {kind!r}; choose one of {WORLDS}")
