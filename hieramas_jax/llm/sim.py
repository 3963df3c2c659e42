"""The simulated LLM pool: the offline default backend, and its oracle.

A :class:`SimWorld` is the hidden truth of a pool: per model a price, a latency,
a completion length range, a skill table (logit of solving a problem alone, per
subject and difficulty level) and a ``pick`` strength (how much the candidate
answers it reads move it: the synthesizer's skill). ``SimWorld.p_correct`` is the
one probability model; the text simulator and the oracle both use it:

    p = sigmoid(skill[model, subject, level]
                + pick[model] * (gain * log(1 + n_correct) - mislead * log(1 + n_wrong)))

where n_correct / n_wrong count the right / wrong answers the prompt already
holds (proposals, predecessors' outputs). So seeing good proposals raises the
chance of a right answer (the collaboration effect) and a good synthesizer
(large pick) exploits it more.

:class:`SimulatedBackend` answers chat requests: it finds the problem by its
question text inside the messages, reads the candidate answers in the prompt
with the task's own ``extract``/``grade``, draws correctness from ``p_correct``
with an RNG derived from (seed, model, messages, sample index) (so results do not
depend on concurrency order), and writes a full answer in the task's format
(some reasoning, then ``task.render_answer``). Token counts: prompt tokens by the
fast 4-characters-per-token estimate, completion tokens drawn in the model's
range (the text has that length).

:class:`Oracle` computes from the same model, without text, the exact solve
rate, expected cost and expected reward of an assignment and DAG for a query
type (subject, level), and searches the best assignment and DAG.

Two worlds (``make_world``, config ``llm.sim_world``): the default *invented*
one above, where wrong answers are independent random perturbations, and the
*anchored* one (``anchored_world``), where each model's single-call accuracy on
the task's mix equals its published score (``sim_facts``) and answers are
correlated: every problem has a hardness shared by all models and k shared
wrong values (distractors) that wrong answers fall into with problem-specific
shares (``AnswerModel``). There the simulator and the oracle track which value
(right, distractor j, an error of one's own) each output states, so majority
voting gains what hard problems and shared mistakes allow, not more; the oracle
stays exact (an expectation over a finite set of problem traits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import math
import random
import re
from typing import Any, Collection, Iterable, Mapping, Sequence

import numpy as np

from hieramas_jax.llm import oracle_search
from hieramas_jax.llm.base import Message, Response, UnknownModelError, Usage, error_response
from hieramas_jax.llm.pool import PAPER_POOL, ModelSpec
from hieramas_jax.llm.tokens import CHARS_PER_TOKEN, count_message_tokens
from hieramas_jax.tasks.base import Problem, RoleSpec, Task

# ---------------------------------------------------------------------------
# The world: models, skills, collaboration.
# ---------------------------------------------------------------------------

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
  answers: "AnswerModel | None" = None

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
                         role: str | None, latent: "Latent") -> list[float]:
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


def default_world(*, seed: int = 0, pool: Sequence[ModelSpec] = PAPER_POOL, subject_spread: float = 0.6,
                  level_slope: float = 0.5, **kwargs: Any) -> SimWorld:
  """The paper's pool with its prices and invented but plausible skills.

  Models of ``pool`` not in the paper's pool get average traits.
  """
  models, ability = {}, {}
  for spec in pool:
    a, pick, latency, tokens = _DEFAULT_TRAITS.get(spec.name, (0.5, 1.0, 0.6, (150, 400)))
    models[spec.name] = SimModel(spec.name, spec.price_in_per_m, spec.price_out_per_m, latency, pick, tokens)
    ability[spec.name] = a
  skill = SkillTable(ability=ability, level_slope=level_slope, subject_spread=subject_spread, seed=seed)
  return SimWorld(models=models, skill=skill, seed=seed, **kwargs)


# ---------------------------------------------------------------------------
# The anchored world: published single-call scores, correlated wrong answers.
# ---------------------------------------------------------------------------


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
  from hieramas_jax.llm import sim_facts  # pylint: disable=g-import-not-at-top

  benchmark = sim_facts.benchmark_of(task)
  if problems is not None:
    mix = _mix_of(problems)
  if not mix:
    mix = sim_facts.BENCHMARK_MIX[benchmark]
  answers = AnswerModel(normal_hardness(hardness_sd), WRONG_PROFILES[benchmark], seed=seed)
  models = {}
  for spec in pool:
    _, pick, latency, tokens = _DEFAULT_TRAITS.get(spec.name, (0.5, 1.0, 0.6, (150, 400)))
    models[spec.name] = SimModel(spec.name, spec.price_in_per_m, spec.price_out_per_m, latency, pick, tokens)
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


# ---------------------------------------------------------------------------
# Reading prompts.
# ---------------------------------------------------------------------------

# Chunk headers of the default prompts: "[Math Solver]", "[Candidate 2]".
_CHUNK_MARKER = re.compile(r"(?m)^\[[A-Za-z][^\]\n]{0,80}\]\n")
_PREFIX_CHARS = 40


class ProblemRegistry:
  """Finds which registered problem a prompt is about, by its question text.

  Questions are indexed by their first 40 characters; a prompt is probed at the
  start of its lines (questions start a line in any sane prompt), the match is
  verified in full, and the longest matching question wins.
  """

  def __init__(self, problems: Iterable[Problem] = ()):
    self._by_prefix: dict[int, dict[str, list[Problem]]] = {}
    self.size = 0
    self.add(problems)

  def add(self, problems: Iterable[Problem]) -> None:
    for p in problems:
      if not p.question:
        raise ValueError(f"problem {p.uid!r} has an empty question; the simulator cannot find it in prompts")
      k = min(_PREFIX_CHARS, len(p.question))
      bucket = self._by_prefix.setdefault(k, {}).setdefault(p.question[:k], [])
      if all(q.question != p.question for q in bucket):
        bucket.append(p)
        self.size += 1

  def find(self, text: str) -> tuple[Problem, int] | None:
    """The problem whose question occurs in ``text`` and where, or None."""
    hint = text.find("Problem:\n")  # the default prompts' layout: a fast first probe
    first = [hint + len("Problem:\n")] if hint >= 0 else []
    for pos in itertools.chain(first, _line_starts(text)):
      best = None
      for k, index in self._by_prefix.items():
        for p in index.get(text[pos:pos + k], ()):
          if text.startswith(p.question, pos) and (best is None or len(p.question) > len(best.question)):
            best = p
      if best is not None:
        return best, pos
    return None


def _line_starts(text: str) -> Iterable[int]:
  yield 0
  pos = text.find("\n")
  while pos >= 0:
    yield pos + 1
    pos = text.find("\n", pos + 1)


# Filler for the reasoning part of simulated answers: lowercase words only (no
# digits, braces, single letters or "answer"), so no task's extractor finds an
# answer in it.
_WORDS = ("first", "we", "note", "that", "the", "given", "terms", "combine", "so", "next", "check", "each",
          "step", "carefully", "using", "known", "rules", "then", "simplify", "result", "value", "follows",
          "from", "this", "consider", "case", "which", "gives", "same", "quantity", "again", "verify",
          "compare", "with", "other", "approach", "both", "agree", "hence", "conclude", "claim", "holds")
_FILLER_RNG = random.Random(1234)
_FILLER = " ".join(_FILLER_RNG.choice(_WORDS) for _ in range(20000))
del _FILLER_RNG


def _filler(rng: random.Random, n_chars: int) -> str:
  if n_chars <= 0:
    return ""
  n_chars = min(n_chars, len(_FILLER) // 2)
  start = rng.randrange(0, len(_FILLER) - n_chars)
  return _FILLER[start:start + n_chars].strip().capitalize()


def _messages_digest(messages: Sequence[Message]) -> bytes:
  h = hashlib.blake2b(digest_size=16)
  for m in messages:
    h.update((m.get("role") or "").encode())
    h.update(b"\x00")
    h.update((m.get("content") or "").encode())
    h.update(b"\x01")
  return h.digest()


# ---------------------------------------------------------------------------
# The backend.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimReading:
  """What the simulator read in a prompt (exposed for tests and debugging)."""

  problem: Problem
  n_correct: int
  n_wrong: int
  role: str | None = None  # the role speaking (from the system message); None for the decision node
  counts: tuple[int, ...] = ()  # anchored worlds: candidates per value (right, distractor 1..k, own wrong)


class SimulatedBackend:
  """The simulated pool behind the Backend interface.

  Args:
    world: the hidden truth (models, skills, collaboration).
    task: gives ``extract``/``grade`` to read candidates and ``render_answer`` to write.
    problems: the problems it may be asked about (more can be added with ``register``).
    realtime: sleep each call's simulated latency times ``latency_scale`` (False:
      answer at once; ``Response.latency`` reports the simulated latency either way).
    latency_scale: factor on the simulated latencies when sleeping.
  """

  def __init__(self, world: SimWorld, task: Task, problems: Iterable[Problem] = (), *,
               realtime: bool = False, latency_scale: float = 1.0):
    self.world = world
    self.task = task
    self.registry = ProblemRegistry(problems)
    self.realtime = realtime
    self.latency_scale = latency_scale
    self.calls = 0
    # Strings of the task's prompts that may look like answers to its extractor
    # (e.g. "Put the final answer in \boxed{}"); removed before reading candidates.
    self._strip = tuple(s for s in {task.answer_instruction} if s)
    self._verdicts: dict[tuple[str, str], bool] = {}  # (uid, extracted answer) -> right?
    self._right_answer: dict[str, str | None] = {}
    self._distractors: dict[str, list[tuple[str, str]]] = {}  # uid -> (text, extracted answer) per distractor

  def register(self, problems: Iterable[Problem]) -> None:
    self.registry.add(problems)

  def known_models(self) -> Collection[str]:
    return self.world.models.keys()

  # -- reading ------------------------------------------------------------
  def _is_right(self, problem: Problem, answer: str, chunk: str) -> bool:
    right = self._right_answer.get(problem.uid, "")
    if right == "":
      right = self.task.extract(self.task.render_answer(problem, True, random.Random(0)))
      self._right_answer[problem.uid] = right
    if answer == right:
      return True
    key = (problem.uid, answer)
    verdict = self._verdicts.get(key)
    if verdict is None:
      if len(self._verdicts) > 1_000_000:
        self._verdicts.clear()
      verdict = self._verdicts[key] = bool(self.task.grade(problem, chunk))
    return verdict

  def distractors(self, problem: Problem) -> list[tuple[str, str]]:
    """The problem's k shared wrong answers (anchored worlds): (answer text, extracted answer) each.

    Rendered by the task itself from a per-(problem, distractor) seed, so every model
    that falls into distractor j writes the same value.
    """
    found = self._distractors.get(problem.uid)
    if found is not None:
      return found
    k = self.world.answers.num_distractors if self.world.answers else 0
    found: list[tuple[str, str]] = []
    for j in range(k):
      for attempt in range(96):
        digest = hashlib.blake2b(f"{self.world.seed}|distractor|{problem.uid}|{j}|{attempt}".encode(),
                                 digest_size=8).digest()
        rng = random.Random(int.from_bytes(digest, "little"))
        # The task's own plausible wrong answers first; some answers (no digits) have
        # only one, then a stand-in value is used.
        text = (self.task.render_answer(problem, False, rng) if attempt < 64 else
                self._stand_in_wrong(problem, rng))
        answer = self.task.extract(text)
        if (answer is not None and all(answer != a for _, a in found)
            and not self._is_right(problem, answer, text)):
          found.append((text, answer))
          break
      else:
        raise ValueError(f"task {self.task.name!r} rendered no {j + 1}th distinct wrong answer for problem "
                         f"{problem.uid!r}; the anchored world's wrong-answer profiles for this task "
                         f"need at most {j} distractors")
    self._distractors[problem.uid] = found
    return found

  def _stand_in_wrong(self, problem: Problem, rng: random.Random) -> str:
    """A wrong answer in the task's format: the right answer of a copy whose reference answer is off.

    Integers move by a large random amount; other answers get a random term added,
    so two stand-ins almost never share a value.
    """
    offset = rng.randrange(1000, 10**9)
    answer = problem.answer.strip()
    changed = str(int(answer) + offset) if re.fullmatch(r"-?\d+", answer) else f"{answer}+{offset}"
    return self.task.render_answer(dataclasses.replace(problem, answer=changed), True, rng)

  def _value_of(self, problem: Problem, answer: str, chunk: str) -> int:
    """0 if right, j for distractor j, k + 1 for any other wrong answer."""
    if self._is_right(problem, answer, chunk):
      return 0
    for j, (_, distractor) in enumerate(self.distractors(problem)):
      if answer == distractor:
        return j + 1
    return self.world.answers.num_distractors + 1

  def _own_wrong_answer(self, problem: Problem, rng: random.Random) -> str:
    """A wrong answer no other output shares (an error of the model's own): a stand-in value,
    else (a format that takes none) the task's own wrong answers that are not distractors."""
    taken = {a for _, a in self.distractors(problem)}
    text = ""
    for attempt in range(40):
      text = self._stand_in_wrong(problem, rng) if attempt < 8 else self.task.render_answer(problem, False, rng)
      answer = self.task.extract(text)
      if answer is not None and answer not in taken and not self._is_right(problem, answer, text):
        return text
    return text  # the task renders nothing else: its last wrong text stands

  def read(self, messages: Sequence[Message]) -> SimReading | None:
    """The problem a prompt is about and the right/wrong answers it already holds."""
    found = None
    for m in reversed(messages):  # the user message comes last in the default prompts
      content = m.get("content") or ""
      hit = self.registry.find(content)
      if hit is not None:
        found = (hit, content)
        break
    if found is None:
      return None
    (problem, pos), content = found
    body = content[:pos] + content[pos + len(problem.question):]
    for s in self._strip:
      body = body.replace(s, "")
    n_correct = n_wrong = 0
    counts = [0] * self.world.answers.num_values if self.world.answers else []
    chunks = _CHUNK_MARKER.split(body)
    for chunk in chunks[1:]:  # chunks[0] is the preamble before the first candidate
      answer = self.task.extract(chunk)
      if answer is None:
        continue
      if counts:
        counts[self._value_of(problem, answer, chunk)] += 1
      elif self._is_right(problem, answer, chunk):
        n_correct += 1
      else:
        n_wrong += 1
    if counts:
      n_correct, n_wrong = counts[0], sum(counts) - counts[0]
    return SimReading(problem, n_correct, n_wrong, self._role_of(messages), tuple(counts))

  def _role_of(self, messages: Sequence[Message]) -> str | None:
    """The task role the system message names first (a prompt says who you are before anything else)."""
    system = " ".join(m.get("content") or "" for m in messages if m.get("role") == "system")
    found = [(system.find(r.name), -len(r.name), r.name) for r in self.task.roles if r.name and r.name in system]
    return min(found)[2] if found else None

  # -- answering ----------------------------------------------------------
  def call_rng(self, model: str, messages: Sequence[Message], sample_index: int) -> random.Random:
    digest = hashlib.blake2b(
        f"{self.world.seed}|{model}|{sample_index}|".encode() + _messages_digest(messages), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))

  def answer(self, model: str, messages: Sequence[Message], sample_index: int = 0) -> Response:
    """The simulated completion, computed synchronously (no sleeping)."""
    spec = self.world.models.get(model)
    if spec is None:
      raise UnknownModelError(f"unknown model {model!r}; the simulated pool has {sorted(self.world.models)}")
    self.calls += 1
    reading = self.read(messages)
    if reading is None:
      return error_response(model, "simulator: no registered problem's question occurs in the messages; "
                            "register the problems with the simulator (SimulatedBackend.register)", attempts=1)
    rng = self.call_rng(model, messages, sample_index)
    latency = spec.latency_s * rng.uniform(0.8, 1.2)
    if self.world.error_rate and rng.random() < self.world.error_rate:
      return error_response(model, "simulator: injected failure", latency=latency)
    if self.world.answers is None:
      p = self.world.p_correct(model, reading.problem.subject, reading.problem.level, reading.n_correct,
                               reading.n_wrong, reading.role)
      correct = rng.random() < p
      n_out = rng.randint(*spec.completion_tokens)
      final = self.task.render_answer(reading.problem, correct, rng)
    else:
      final, n_out = self._anchored_answer(model, reading, rng)
    # The text is n_out tokens long by the 4-characters estimate, so that the
    # prompts that quote it grow by about n_out tokens (what the oracle expects).
    reasoning = _filler(rng, int(n_out * CHARS_PER_TOKEN) - len(final) - 2)
    text = f"{reasoning}.\n{final}" if reasoning else final
    usage = Usage(count_message_tokens(messages, exact=False), n_out)
    return Response(model=model, text=text, usage=usage, cost=spec.cost(usage.prompt_tokens, n_out),
                    latency=latency, finish_reason="stop")

  def _anchored_answer(self, model: str, reading: SimReading, rng: random.Random) -> tuple[str, int]:
    """The final answer text and completion length of one call in an anchored world."""
    problem = reading.problem
    latent = self.world.answers.latent_of(problem.uid)
    dist = self.world.value_distribution(model, problem.subject, problem.level, reading.counts, reading.role,
                                         latent)
    u, value = rng.random(), len(dist) - 1
    for v, q in enumerate(dist):
      u -= q
      if u < 0:
        value = v
        break
    n_out = rng.randint(*self.world.models[model].completion_tokens)
    if value == 0:
      return self.task.render_answer(problem, True, rng), n_out
    if value <= self.world.answers.num_distractors:
      return self.distractors(problem)[value - 1][0], n_out
    return self._own_wrong_answer(problem, rng), n_out

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int = 0,
                     **params: Any) -> Response:
    del params  # the simulator's answers do not depend on generation parameters
    response = self.answer(model, messages, sample_index)
    if self.realtime and self.latency_scale > 0 and response.latency > 0:
      await asyncio.sleep(response.latency * self.latency_scale)
    return response

  def cache_identity(self, model: str) -> dict[str, str]:
    """What besides the request decides the answers (part of the response cache key): the world."""
    del model
    world, digest = getattr(self, "_world_digest", (None, ""))
    if world is not self.world:  # worlds are frozen: one digest per world object (repr is deterministic)
      digest = hashlib.sha256(repr(self.world).encode()).hexdigest()
      self._world_digest = (self.world, digest)
    return {"simulated_world": digest}


# ---------------------------------------------------------------------------
# The oracle.
# ---------------------------------------------------------------------------

DEFAULT_C = 300.0  # c_s and c_f of the paper


def reward_of(solved: bool | float, cost: float, c_s: float = DEFAULT_C, c_f: float = DEFAULT_C) -> float:
  """The paper's cost-aware reward; ``solved`` may be a probability (expected reward)."""
  good = max(math.exp(-c_s * cost), 0.5)
  bad = max(-math.exp(min(c_f * cost, 700.0)), -2.5)
  return float(solved) * good + (1.0 - float(solved)) * bad


@dataclasses.dataclass(frozen=True)
class OracleResult:
  """Expected outcome of one plan for one query type.

  Attributes:
    solve_rate: chance that the decision node answers right (exact under the model).
    expected_cost: expected USD of all calls (expected token counts).
    expected_reward: ``reward_of(solve_rate, expected_cost)``, i.e. the reward's
      expectation over correctness with the cost at its expectation (the cost's
      own spread, a few percent, is ignored).
    role_solve_rates: per role, the chance its output is right; None if dropped.
  """

  solve_rate: float
  expected_cost: float
  expected_reward: float
  role_solve_rates: tuple[float | None, ...]


Assignment = Sequence[Sequence[str | None]]


def _poisson_binomial(ps: Sequence[float]) -> list[float]:
  dist = [1.0]
  for p in ps:
    nxt = [0.0] * (len(dist) + 1)
    for k, q in enumerate(dist):
      nxt[k] += q * (1.0 - p)
      nxt[k + 1] += q * p
    dist = nxt
  return dist


def _majority_right(dist: Sequence[float], samples: int) -> float:
  """Chance that the right value (index 0) wins a vote of ``samples`` draws from ``dist``.

  ``dist`` is over [right, shared wrong values..., own wrong answer]; own wrong
  answers each get one vote. Ties are broken uniformly (first-stated rule).
  """
  shared = len(dist) - 2
  win = 0.0
  for counts in _compositions(samples, len(dist)):
    prob = math.factorial(samples)
    for c, q in zip(counts, dist):
      prob *= q**c / math.factorial(c)
    if prob == 0.0 or counts[0] == 0:
      continue
    own = counts[-1]
    best_wrong = max(list(counts[1:1 + shared]) + [1 if own else 0])
    if counts[0] > best_wrong:
      win += prob
    elif counts[0] == best_wrong:
      tied = 1 + sum(1 for c in counts[1:1 + shared] if c == best_wrong) + (own if best_wrong == 1 else 0)
      win += prob / tied
  return win


def _compositions(total: int, parts: int) -> Iterable[tuple[int, ...]]:
  if parts == 1:
    yield (total,)
    return
  for first in range(total + 1):
    for rest in _compositions(total - first, parts - 1):
      yield (first,) + rest


def _as_adjacency(adjacency: Any, n: int) -> list[list[int]]:
  adj = np.asarray(adjacency)
  if adj.shape != (n, n):
    raise ValueError(f"adjacency has shape {adj.shape}; expected ({n}, {n}) for {n} roles")
  return [[int(v != 0) for v in row] for row in adj.tolist()]


def _topological_order(adj: Sequence[Sequence[int]], nodes: Sequence[int]) -> list[int]:
  remaining = set(nodes)
  order: list[int] = []
  while remaining:
    ready = sorted(j for j in remaining if not any(adj[i][j] for i in remaining if i != j))
    if not ready:
      raise ValueError("the adjacency has a cycle; role graphs must be DAGs")
    order.extend(ready)
    remaining.difference_update(ready)
  return order


class Oracle:
  """Exact expected solve rate, cost and reward of plans under a SimWorld.

  It enumerates the joint right/wrong outcomes of the roles (2^R states, R <= 16)
  and, per role, the outcomes of its proposers, with the probabilities of
  ``SimWorld.p_correct``. Expected prompt tokens come from the task's own prompt
  builders with placeholder texts of each model's expected length, counted like
  the simulator counts them.

  Args:
    world: the simulated pool.
    task: the task whose prompts the executor uses.
    roles: the roles of the plans (their order is the adjacency's order).
    c_s, c_f: reward constants.
  """

  def __init__(self, world: SimWorld, task: Task, roles: Sequence[RoleSpec], *,
               c_s: float = DEFAULT_C, c_f: float = DEFAULT_C):
    if len(roles) > 16:
      raise ValueError(f"the exact oracle enumerates 2^R outcomes; R={len(roles)} > 16 is too many")
    self.world = world
    self.task = task
    self.roles = tuple(roles)
    self.c_s, self.c_f = c_s, c_f
    self._placeholders: dict[str, str] = {}

  def _placeholder(self, model: str) -> str:
    text = self._placeholders.get(model)
    if text is None:
      n = self.world.models[model].expected_completion_tokens
      text = self._placeholders[model] = "x" * int(round(n * CHARS_PER_TOKEN))
    return text

  def _prompt_tokens(self, messages: Sequence[Message]) -> int:
    return count_message_tokens(messages, exact=False)

  def evaluate(self, subject: str, level: int, assignment: Assignment, adjacency: Any, decision_model: str, *,
               question: str | None = None, question_tokens: int = 40, uid: str | None = None) -> OracleResult:
    """Expected outcome of (assignment [R][P+1], adjacency [R,R], decision model) on one query type.

    ``question`` (or a stand-in of ``question_tokens`` tokens) sizes the prompts for costs.
    In an anchored world the solve rate is the exact mean over the problems of the
    type (their hardness and wrong-answer traits), or that of problem ``uid`` alone.
    """
    world = self.world
    n = len(self.roles)
    if len(assignment) != n:
      raise ValueError(f"assignment has {len(assignment)} rows; expected one per role ({n})")
    for name in {m for row in assignment for m in row if m is not None} | {decision_model}:
      if name not in world.models:
        raise UnknownModelError(f"unknown model {name!r}; the simulated pool has {sorted(world.models)}")
    adj = _as_adjacency(adjacency, n)
    active = [len(row) > 0 and row[-1] is not None for row in assignment]
    order = _topological_order(adj, [r for r in range(n) if active[r]])
    preds = {r: [i for i in order if adj[i][r] and i != r] for r in order}
    problem = Problem(uid="oracle", question=question or "q" * int(question_tokens * CHARS_PER_TOKEN),
                      answer="", subject=subject, level=level)

    # Expected cost (by linearity; independent of correctness).
    cost = 0.0
    for r in order:
      role, row = self.roles[r], assignment[r]
      seen = [(self.roles[i].name, self._placeholder(assignment[i][-1])) for i in preds[r]]
      proposers = [m for m in row[:-1] if m is not None]
      if proposers:
        tokens = self._prompt_tokens(self.task.proposer_messages(problem, role, seen))
        for m in proposers:
          cost += world.models[m].cost(tokens, world.models[m].expected_completion_tokens)
      synth = row[-1]
      tokens = self._prompt_tokens(self.task.synthesizer_messages(
          problem, role, [self._placeholder(m) for m in proposers], seen))
      cost += world.models[synth].cost(tokens, world.models[synth].expected_completion_tokens)
    outputs = [(self.roles[r].name, self._placeholder(assignment[r][-1])) for r in order]
    tokens = self._prompt_tokens(self.task.decision_messages(problem, outputs))
    cost += world.models[decision_model].cost(tokens, world.models[decision_model].expected_completion_tokens)

    if world.answers is not None:
      latents = world.answers.latents() if uid is None else [world.answers.latent_of(uid)]
      shares = np.array([lat.prob for lat in latents])
      solves, rates = self._solve_values(subject, level, assignment, order, preds, decision_model, latents)
      solve = float(shares @ solves)
      return OracleResult(solve_rate=solve, expected_cost=cost,
                          expected_reward=reward_of(solve, cost, self.c_s, self.c_f),
                          role_solve_rates=tuple(None if r is None else float(shares @ r) for r in rates))

    # Exact solve rates: joint right/wrong states of the roles done so far.
    states: dict[tuple[int, ...], float] = {(): 1.0}
    slot = {}
    role_rates: list[float | None] = [None] * n
    for r in order:
      row = assignment[r]
      proposers = [m for m in row[:-1] if m is not None]
      synth = row[-1]
      nxt: dict[tuple[int, ...], float] = {}
      memo: dict[int, float] = {}
      for state, prob in states.items():
        k_right = sum(state[slot[i]] for i in preds[r])
        if k_right not in memo:
          k_wrong = len(preds[r]) - k_right
          name = self.roles[r].name
          dist = _poisson_binomial([world.p_correct(m, subject, level, k_right, k_wrong, name) for m in proposers])
          memo[k_right] = sum(
              q * world.p_correct(synth, subject, level, k_right + c, k_wrong + len(proposers) - c, name)
              for c, q in enumerate(dist))
        q_right = memo[k_right]
        nxt[state + (1,)] = nxt.get(state + (1,), 0.0) + prob * q_right
        nxt[state + (0,)] = nxt.get(state + (0,), 0.0) + prob * (1.0 - q_right)
      slot[r] = len(slot)
      states = nxt
      role_rates[r] = sum(p for s, p in states.items() if s[slot[r]])
    solve = 0.0
    for state, prob in states.items():
      k_right = sum(state)
      solve += prob * world.p_correct(decision_model, subject, level, k_right, len(state) - k_right)
    return OracleResult(solve_rate=solve, expected_cost=cost,
                        expected_reward=reward_of(solve, cost, self.c_s, self.c_f),
                        role_solve_rates=tuple(role_rates))

  def _solve_values(self, subject: str, level: int, assignment: Assignment, order: Sequence[int],
                    preds: Mapping[int, Sequence[int]], decision_model: str,
                    latents: Sequence[Latent]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Exact solve rate and per-role rates, one entry per problem trait (anchored worlds).

    A state is (the answer values of the roles some later role still reads, the count
    of each value over all roles done): what every later call and the decision node
    depend on. Roles leave the first part once their last reader is done. Which
    states occur does not depend on the traits, so each state carries one
    probability per trait (an array) and the walk is done once.
    """
    num_values = self.world.answers.num_values
    position = {r: i for i, r in enumerate(order)}
    last_reader = {r: max((position[j] for j in order if r in preds[j]), default=-1) for r in order}
    dists: dict[tuple[str, tuple[int, ...], str | None], np.ndarray] = {}

    def dist(model: str, counts: tuple[int, ...], role: str | None) -> np.ndarray:
      key = (model, counts, role)
      found = dists.get(key)
      if found is None:
        found = dists[key] = np.array([self.world.value_distribution(model, subject, level, counts, role, lat)
                                       for lat in latents])
      return found  # [traits, values]

    live: list[int] = []
    states: dict[tuple[tuple[int, ...], tuple[int, ...]], np.ndarray] = {
        ((), (0,) * num_values): np.ones(len(latents))}
    role_rates: list[np.ndarray | None] = [None] * len(assignment)
    for step, r in enumerate(order):
      row = assignment[r]
      proposers = [m for m in row[:-1] if m is not None]
      synth, name = row[-1], self.roles[r].name
      slots = [live.index(i) for i in preds[r]]
      memo: dict[tuple[int, ...], np.ndarray] = {}
      nxt: dict[tuple[tuple[int, ...], tuple[int, ...]], np.ndarray] = {}
      right = np.zeros(len(latents))
      for (values, totals), prob in states.items():
        seen = [0] * num_values
        for slot in slots:
          seen[values[slot]] += 1
        key = tuple(seen)
        out = memo.get(key)
        if out is None:
          out = memo[key] = self._supernode_values(proposers, synth, name, key, dist)
        right += prob * out[:, 0]
        for v in range(num_values):
          if not out[:, v].any():
            continue
          state = (values + (v,), totals[:v] + (totals[v] + 1,) + totals[v + 1:])
          add = prob * out[:, v]
          held = nxt.get(state)
          nxt[state] = add if held is None else held + add
      role_rates[r] = right
      live.append(r)
      keep = [i for i, role in enumerate(live) if last_reader[role] > step]
      live = [live[i] for i in keep]
      states = {}
      for (values, totals), prob in nxt.items():
        state = (tuple(values[i] for i in keep), totals)
        held = states.get(state)
        states[state] = prob if held is None else held + prob
    solve = np.zeros(len(latents))
    for (_, totals), prob in states.items():
      solve += prob * dist(decision_model, totals, None)[:, 0]
    return solve, role_rates

  @staticmethod
  def _supernode_values(proposers: Sequence[str], synth: str, role: str, seen: tuple[int, ...],
                        dist: Any) -> np.ndarray:
    """Distribution [traits, values] of a role's output value given its predecessors' values."""
    proposals: dict[tuple[int, ...], np.ndarray | float] = {(0,) * len(seen): 1.0}
    for m in proposers:
      d = dist(m, seen, role)
      nxt: dict[tuple[int, ...], Any] = {}
      for counts, prob in proposals.items():
        for v in range(len(seen)):
          if d[:, v].any():
            key = counts[:v] + (counts[v] + 1,) + counts[v + 1:]
            nxt[key] = nxt.get(key, 0.0) + prob * d[:, v]
      proposals = nxt
    out = 0.0
    for counts, prob in proposals.items():
      read = tuple(a + b for a, b in zip(seen, counts))
      out = out + np.asarray(prob)[..., None] * dist(synth, read, role)
    return out

  def single_call(self, subject: str, level: int, model: str, *, uid: str | None = None) -> float:
    """Accuracy of one plain call (no role, nothing read) on a query type, or on problem ``uid``."""
    world = self.world
    if world.answers is None:
      return world.p_correct(model, subject, level, 0, 0)
    latents = world.answers.latents() if uid is None else [world.answers.latent_of(uid)]
    return sum(lat.prob * world.p_correct(model, subject, level, 0, 0, None, lat.shift) for lat in latents)

  def self_consistency(self, subject: str, level: int, model: str, *, samples: int = 5,
                       uid: str | None = None) -> float:
    """Exact accuracy of a majority vote over ``samples`` plain calls (baselines.majority_vote).

    Votes go by answer value; a tie goes to the value stated first, which for
    exchangeable samples is each tied value with equal chance. Own wrong answers
    never agree with anything. In the invented world every wrong answer counts as
    its own (its random perturbations rarely coincide), so there it is an approximation.
    """
    world = self.world
    if world.answers is None:
      latents = [Latent(0.0, (1.0,), 1.0)]
    else:
      latents = world.answers.latents() if uid is None else [world.answers.latent_of(uid)]
    total = 0.0
    for latent in latents:
      if world.answers is None:
        p = world.p_correct(model, subject, level, 0, 0)
        dist = [p, 1.0 - p]
      else:
        dist = world.value_distribution(model, subject, level, (0,) * world.answers.num_values, None, latent)
      total += latent.prob * _majority_right(dist, samples)
    return total

  def best_assignment(self, subject: str, level: int, adjacency: Any, decision_model: str, *,
                      proposers: int = 2, models: Sequence[str] | None = None, restarts: int = 6,
                      max_sweeps: int = 20, seed: int = 0, objective: str = "expected_reward",
                      **evaluate_kwargs: Any) -> tuple[list[list[str | None]], OracleResult]:
    """The best assignment [R][proposers+1] found on one DAG, and its result (``oracle_search.best_plan``)."""
    found = oracle_search.best_plan(self, subject, level, [adjacency], decision_model, proposers=proposers,
                                    models=models, restarts=restarts, max_sweeps=max_sweeps, seed=seed,
                                    objective=objective, **evaluate_kwargs)
    return found.assignment, found.result

  def best_dag(self, subject: str, level: int, dags: Sequence[Any], decision_model: str,
               **search_kwargs: Any) -> tuple[int, list[list[str | None]], OracleResult, list[OracleResult]]:
    """The DAG of ``dags`` (each [R,R]) whose best assignment scores highest.

    Returns (index, its assignment, its result, the best result of every DAG).
    """
    if not dags:
      raise ValueError("best_dag needs at least one DAG")
    found = [self.best_assignment(subject, level, d, decision_model, **search_kwargs) for d in dags]
    objective = search_kwargs.get("objective", "expected_reward")
    index = max(range(len(dags)), key=lambda i: getattr(found[i][1], objective))
    return index, found[index][0], found[index][1], [f[1] for f in found]
