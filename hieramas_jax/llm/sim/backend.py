"""The simulated pool behind the Backend interface: it reads prompts and writes answers.

:class:`SimulatedBackend` finds the problem by its question text inside the
messages, reads the candidate answers in the prompt with the task's own
``extract``/``grade``, draws correctness from ``SimWorld.p_correct`` (or, in an
anchored world, the answer value from ``SimWorld.value_distribution``) with an
RNG derived from (seed, model, messages, sample index), and writes a full answer
in the task's format: some reasoning, then ``task.render_answer``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import random
import re
from typing import Any, Collection, Iterable, Sequence

from hieramas_jax.llm.base import Message, Response, UnknownModelError, Usage, error_response
from hieramas_jax.llm.sim.world import SimWorld
from hieramas_jax.llm.tokens import CHARS_PER_TOKEN, count_message_tokens
from hieramas_jax.tasks.base import Problem, Task

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

