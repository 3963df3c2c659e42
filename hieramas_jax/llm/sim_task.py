"""A small arithmetic task for exercising the simulator, the executor and the bench.

It needs no data files and grades exactly: answers are integers in ``\\boxed{}``.
Subjects are the operations, levels 1..5 the size of the numbers. It is a fixture
of the LLM layer (tests, bench, the simulator server's default), not a benchmark.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from hieramas_jax.tasks.base import Problem, RoleSpec, Task

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")

SUBJECTS = ("addition", "subtraction", "multiplication")
_SYMBOL = {"addition": "+", "subtraction": "-", "multiplication": "*"}


class ArithmeticTask(Task):
  """Integer arithmetic; the answer is the last ``\\boxed{N}`` of a text."""

  name = "arithmetic"
  roles = (
      RoleSpec("Math Solver", "Solve the problem step by step."),
      RoleSpec("Inspector", "Check the reasoning of your teammates and fix any mistake."),
      RoleSpec("Planner", "Outline how the problem should be solved.", gives_answer=False),
  )
  answer_instruction = "Put the final answer in \\boxed{}."

  def load(self, split: str = "test", *, n: int = 100, seed: int = 0,
           subjects: Sequence[str] = SUBJECTS, levels: Sequence[int] = (1, 2, 3, 4, 5)) -> list[Problem]:
    """``n`` distinct problems cycling through subjects and levels (seeded)."""
    for s in subjects:
      if s not in _SYMBOL:
        raise ValueError(f"unknown subject {s!r}; choose from {SUBJECTS}")
    rng = random.Random(f"{split}/{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    i = 0
    while len(problems) < n:
      subject = subjects[i % len(subjects)]
      level = levels[(i // len(subjects)) % len(levels)]
      i += 1
      hi = 10 ** (level + 1)
      a, b = rng.randrange(hi // 10, hi), rng.randrange(hi // 10, hi)
      value = {"addition": a + b, "subtraction": a - b, "multiplication": a * b}[subject]
      question = f"Compute {a} {_SYMBOL[subject]} {b}. (item {split}-{len(problems)})"
      if question in seen:
        continue
      seen.add(question)
      problems.append(Problem(uid=f"{self.name}-{split}-{len(problems)}", question=question, answer=str(value),
                              subject=subject, level=level))
    return problems

  def extract(self, text: str) -> str | None:
    found = _BOXED.findall(text or "")
    if not found:
      return None
    value = found[-1].strip().replace(",", "")
    return value or None

  def grade(self, problem: Problem, text: str) -> bool:
    return self.extract(text) == problem.answer.strip()

  def render_answer(self, problem: Problem, correct: bool, rng: random.Random) -> str:
    value = int(problem.answer)
    if not correct:
      value += rng.choice((-1, 1)) * rng.randint(1, max(2, abs(value) // 10 + 1))
    return f"So the result is \\boxed{{{value}}}."
