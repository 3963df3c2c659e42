"""The synthetic task: deterministic, disjoint splits, cheap, exact answers, MATH format."""

from __future__ import annotations

import collections
import fractions
import random

import pytest

from hieramas_jax.tasks import get_task
from hieramas_jax.tasks.synthetic import LEVELS, SUBJECTS, Answer, SyntheticTask, read_exact, split_of


def test_deterministic_and_prefix_stable():
  task = SyntheticTask()
  first = task.load("train", n=300, seed=3)
  assert first == task.load("train", n=300, seed=3)
  assert task.load("train", n=100, seed=3) == first[:100]
  assert [p.question for p in task.load("train", n=50, seed=4)] != [p.question for p in first[:50]]


def test_splits_are_disjoint_and_unique():
  task = SyntheticTask()
  questions = {split: [p.question for p in task.load(split, n=n, seed=seed)]
               for split, n, seed in (("train", 3000, 0), ("val", 400, 1), ("test", 400, 2))}
  for split, items in questions.items():
    assert len(set(items)) == len(items)
    assert all(split_of(q) == split for q in items)
  assert not set(questions["train"]) & set(questions["test"])
  assert not set(questions["val"]) & set(questions["test"])
  assert not set(questions["train"]) & set(questions["val"])


def test_covers_every_subject_and_level_evenly():
  problems = SyntheticTask().load("test", n=1000)
  counts = collections.Counter((p.subject, p.level) for p in problems)
  assert set(counts) == {(s, l) for s in SUBJECTS for l in LEVELS}
  assert set(counts.values()) == {40}  # equal shares
  assert len({p.uid for p in problems}) == 1000 and all(p.uid.startswith("synthetic/") for p in problems)
  only = SyntheticTask().load("val", n=40, subjects=["geometry"], levels=[4, 5])
  assert {p.subject for p in only} == {"geometry"} and {p.level for p in only} == {4, 5}


def test_thousands_of_distinct_problems():  # their speed: bench/host_speed.py
  train = SyntheticTask().load("train", n=4000, seed=11)
  test = SyntheticTask().load("test", n=1000, seed=11)
  assert len({p.uid for p in train}) == 4000 and len({p.uid for p in test}) == 1000
  assert not {p.question for p in train} & {p.question for p in test}


def test_answers_are_exact_and_in_math_format():
  assert Answer(fractions.Fraction(-6, 8)).latex() == "-\\frac{3}{4}"
  assert Answer(12).latex() == "12"
  assert Answer(fractions.Fraction(9, 4), pi=True).latex() == "\\frac{9\\pi}{4}"
  assert Answer(1, pi=True).latex() == "\\pi"
  cases = [("\\frac{3}{4}", fractions.Fraction(3, 4), False), ("0.75", fractions.Fraction(3, 4), False),
           ("-12", -12, False), ("25\\pi", 25, True), ("\\frac{9\\pi}{4}", fractions.Fraction(9, 4), True),
           ("\\frac{9}{4}\\pi", fractions.Fraction(9, 4), True), ("\\pi", 1, True)]
  for text, value, pi in cases:
    answer = read_exact(text)
    assert (answer.value, answer.pi) == (value, pi), text
  assert read_exact("\\sqrt{2}") is None
  # Multiplication signs are evaluated, never deleted (2*50 was read as 250, 3 \\cdot 4 as 34).
  assert read_exact("2*50").value == 100 and read_exact("3 \\cdot 4").value == 12
  assert read_exact("3 4") is None and read_exact("17 + 25 = 43") is None
  for problem in SyntheticTask().load("val", n=200):
    assert read_exact(problem.answer) is not None
    assert "\\boxed" not in problem.question


def test_exact_grading():
  task = SyntheticTask()
  problem = next(p for p in task.load("train", n=500) if read_exact(p.answer).value.denominator in (3, 7, 9))
  value = read_exact(problem.answer).value
  assert task.grade(problem, f"so \\boxed{{{problem.answer}}}")
  assert task.grade(problem, f"The answer is {value.numerator}/{value.denominator}.")
  assert not task.grade(problem, f"\\boxed{{{float(value):.2f}}}")  # a rounded decimal is not exact
  assert not task.grade(problem, "no final answer")
  circle = task.load("train", n=10, subjects=["geometry"], levels=[4])[0]
  coefficient = read_exact(circle.answer).value
  assert not task.grade(circle, f"\\boxed{{{coefficient}}}")  # the pi is part of the answer


def test_rendered_answers_grade_as_intended():
  task = get_task("synthetic")
  rng = random.Random(0)
  problems = task.load("train", n=1000)
  assert all(task.grade(p, task.render_answer(p, True, rng)) for p in problems)
  assert not any(task.grade(p, task.render_answer(p, False, rng)) for p in problems)


def test_bad_arguments():
  with pytest.raises(ValueError, match="train, val, test"):
    SyntheticTask().load("dev")
  with pytest.raises(ValueError, match="subjects"):
    SyntheticTask().load("train", subjects=["poetry"])
