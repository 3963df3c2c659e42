"""A seeded generator of MATH-format word problems, so everything runs with no data files.

Five subjects (arithmetic, algebra, counting, number_theory, geometry) at five
levels, with exact answers (integers, reduced fractions, or rational multiples
of pi) written as MATH answers are (``\\frac{3}{4}``, ``12\\pi``). Generation
is deterministic given the seed. A question belongs to exactly one split
(train 80%, val 10%, test 10%), decided by a hash of its text, so the splits
are disjoint whatever the seeds; within a split questions are unique, and
``load(n=k)`` is a prefix of ``load(n=k+m)`` for the same seed.

Grading is by exact value: the stated answer (the last ``\\boxed{}``, else the
last "The answer is ...") is evaluated by a safe arithmetic reader
(``math_grading.read_value``: ``\\boxed{2*50}`` is 100, ``\\boxed{3 \\cdot 4}`` is
12, ``x = 4`` is 4, ``\\$5``, ``5\\%``, ``4.0``, ``\\text{4}`` and ``{4}`` read as their
numbers) and compared exactly, rounded decimals included (0.33 is not 1/3).
Juxtaposed numbers (``3 4``), self-contradicting chains (``17 + 25 = 43``) and
unsolved equations (``2x = 8``) are graded wrong. An answer found only by the
"The answer is" fallback must be a final value (a number, fraction or rational
multiple of pi): "the answer is 17 + 25" restates the question and is graded
wrong, while "the answer is 17 + 25 = 42" gives 42. Boxed forms the reader does
not know (``\\sqrt{144}``) go to the MATH grader.
"""

from __future__ import annotations

import fractions
import hashlib
import math
import random
from typing import Callable, Iterable

from hieramas_jax.tasks import base
from hieramas_jax.tasks import math as math_task
from hieramas_jax.tasks import math_grading

Fraction = fractions.Fraction
SUBJECTS = ("arithmetic", "algebra", "counting", "number_theory", "geometry")
LEVELS = (1, 2, 3, 4, 5)
SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}

_NAMES = ("Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Maya",
          "Noah", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Vera", "Wes", "Yuki", "Zoe")
_ITEMS = ("marbles", "stamps", "apples", "coins", "stickers", "books", "shells", "cards", "pencils", "beads")


class Answer:
  """An exact answer: ``value`` (times pi when ``pi``)."""

  __slots__ = ("value", "pi")

  def __init__(self, value: Fraction | int, pi: bool = False):
    self.value = Fraction(value)
    self.pi = pi

  def latex(self) -> str:
    v = self.value
    sign = "-" if v < 0 else ""
    v = abs(v)
    if not self.pi:
      return f"{sign}{v.numerator}" if v.denominator == 1 else f"{sign}\\frac{{{v.numerator}}}{{{v.denominator}}}"
    if v == 0:
      return "0"
    numerator = "" if v.numerator == 1 else str(v.numerator)
    if v.denominator == 1:
      return f"{sign}{numerator}\\pi"
    return f"{sign}\\frac{{{numerator}\\pi}}{{{v.denominator}}}"


# ---- templates: (rng) -> (question, answer) --------------------------------
def _frac(v: Fraction) -> str:
  return Answer(v).latex()


def _terms(*pairs: tuple[int, str]) -> str:
  """LaTeX of a sum of terms (coefficient, variable): (2,'x'), (-1,'y'), (5,'') -> 2x - y + 5."""
  out = ""
  for coefficient, variable in pairs:
    if coefficient == 0:
      continue
    magnitude = abs(coefficient)
    body = (str(magnitude) if magnitude != 1 or not variable else "") + variable
    if not out:
      out = ("-" if coefficient < 0 else "") + body
    else:
      out += (" - " if coefficient < 0 else " + ") + body
  return out or "0"


def _arithmetic(rng: random.Random, level: int) -> tuple[str, Answer]:
  name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
  if level == 1:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
      return f"{name} has {a} {item} and is given {b} more. How many {item} does {name} have now?", Answer(a + b)
    a, b = max(a, b) + rng.randint(1, 50), min(a, b)
    return f"{name} had {a} {item} and gave away {b}. How many {item} are left?", Answer(a - b)
  if level == 2:
    a, b, c = rng.randint(12, 99), rng.randint(3, 19), rng.randint(10, 200)
    return (f"{name} packs {b} boxes of {a} {item} each and has {c} loose {item}. How many {item} is that in "
            f"all? (Compute ${a} \\times {b} + {c}$.)", Answer(a * b + c))
  if level == 3:
    b, d = rng.randint(2, 12), rng.randint(2, 12)
    a, c = rng.randint(1, 3 * b), rng.randint(1, 3 * d)
    return (f"{name} pours $\\frac{{{a}}}{{{b}}}$ liters of juice into a jug and then $\\frac{{{c}}}{{{d}}}$ liters "
            "more. How many liters are in the jug? Express your answer as a common fraction in lowest terms.",
            Answer(Fraction(a, b) + Fraction(c, d)))
  if level == 4:
    b, d, f = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
    a, c, e = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 20)
    value = Fraction(a, b) * Fraction(c, d) - Fraction(e, f)
    return (f"Compute $\\frac{{{a}}}{{{b}}} \\cdot \\frac{{{c}}}{{{d}}} - \\frac{{{e}}}{{{f}}}$ and write it as "
            "a fraction in lowest terms.", Answer(value))
  price, up, down = rng.randint(20, 400), rng.choice([10, 20, 25, 30, 40, 50]), rng.choice([5, 10, 15, 20, 25])
  thing = rng.choice(("lamp", "chair", "bicycle", "kettle", "rug", "clock"))
  value = Fraction(price) * Fraction(100 + up, 100) * Fraction(100 - down, 100)
  return (f"{name}'s shop buys a {thing} for ${price}$ dollars, raises the price by ${up}\\%$, and later sells it "
          f"at a ${down}\\%$ discount off the raised price. For how many dollars does it sell the {thing}? Give an "
          "exact answer.", Answer(value))


def _algebra(rng: random.Random, level: int) -> tuple[str, Answer]:
  if level == 1:
    a, x, b = rng.randint(2, 12), rng.randint(-20, 20), rng.randint(-50, 50)
    return f"Solve for $x$: ${_terms((a, 'x'), (b, ''))} = {a * x + b}$.", Answer(x)
  if level == 2:
    a, c = rng.randint(2, 15), rng.randint(1, 15)
    while c == a:
      c = rng.randint(1, 15)
    b, d = rng.randint(-40, 40), rng.randint(-40, 40)
    return (f"Solve for $x$: ${_terms((a, 'x'), (b, ''))} = {_terms((c, 'x'), (d, ''))}$. Express your answer as "
            "a common fraction if needed.", Answer(Fraction(d - b, a - c)))
  if level == 3:
    while True:
      a, b, c, d = (rng.randint(-9, 9) for _ in range(4))
      if a * d - b * c != 0 and 0 not in (a, b, c, d):
        break
    x, y = rng.randint(-10, 10), rng.randint(-10, 10)
    e, f = a * x + b * y, c * x + d * y
    system = f"${_terms((a, 'x'), (b, 'y'))} = {e}$ and ${_terms((c, 'x'), (d, 'y'))} = {f}$"
    return f"If {system}, what is $x + y$?", Answer(x + y)
  if level == 4:
    r1, r2 = rng.randint(-25, 25), rng.randint(-25, 25)
    s, p = r1 + r2, r1 * r2
    poly = f"{_terms((1, 'x^2'), (-s, 'x'), (p, ''))} = 0"
    ask = rng.randrange(3)
    if ask == 0:
      return f"What is the sum of the squares of the solutions of ${poly}$?", Answer(r1 * r1 + r2 * r2)
    if ask == 1:
      return f"What is the positive difference between the solutions of ${poly}$?", Answer(abs(r1 - r2))
    return f"What is the larger solution of ${poly}$?", Answer(max(r1, r2))
  first, step, count = rng.randint(-20, 30), rng.randint(-7, 9), rng.randint(10, 60)
  total = count * (2 * first + (count - 1) * step) // 2
  return (f"An arithmetic sequence starts at ${first}$ and each term is ${step}$ more than the one before. What "
          f"is the sum of its first ${count}$ terms?", Answer(total))


def _counting(rng: random.Random, level: int) -> tuple[str, Answer]:
  name = rng.choice(_NAMES)
  if level == 1:
    a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 8)
    return (f"{name} has {a} shirts, {b} pairs of trousers and {c} hats. How many different outfits of one shirt, "
            "one pair of trousers and one hat can be made?", Answer(a * b * c))
  if level == 2:
    n, k = rng.randint(5, 40), rng.choice([2, 3, 4])
    places = ("first and second", "gold, silver and bronze", "first, second, third and fourth")[k - 2]
    event = rng.choice(("race", "spelling contest", "chess tournament", "cooking contest", "quiz"))
    return (f"{name} is judging a {event} with {n} entrants. In how many ways can the {places} places be awarded "
            "(no ties)?", Answer(math.perm(n, k)))
  if level == 3:
    n, k = rng.randint(6, 40), rng.randint(2, 6)
    group = rng.choice(("committee", "team", "study group", "panel"))
    return (f"In how many ways can {name} choose a {group} of {k} from {n} classmates?", Answer(math.comb(n, k)))
  if level == 4:
    letters = rng.sample("ABCDEFGHKMNPRST", rng.randint(2, 4))
    counts = [rng.randint(1, 3) for _ in letters]
    word = "".join(l * c for l, c in zip(letters, counts))
    word = "".join(rng.sample(word, len(word)))
    value = math.factorial(len(word))
    for c in counts:
      value //= math.factorial(c)
    return f"How many distinct arrangements of the letters of the word {word} are there?", Answer(value)
  if rng.random() < 0.4:
    dice = rng.choice([2, 3])
    faces = [range(1, 7)] * dice
    outcomes = [sum(roll) for roll in _product(faces)]
    total = rng.randint(dice + 1, 6 * dice - 1)
    at_least = rng.random() < 0.5
    ways = sum(1 for o in outcomes if (o >= total if at_least else o == total))
    event = f"at least {total}" if at_least else f"exactly {total}"
    return (f"{name} rolls {dice} fair six-sided dice. What is the probability that the sum is {event}? Express "
            "your answer as a common fraction.", Answer(Fraction(ways, len(outcomes))))
  n, k, m = rng.randint(8, 30), rng.randint(3, 6), rng.randint(2, 5)
  return (f"{name}'s club of {n} members, {m} of whom are officers, picks a committee of {k}. How many committees "
          "include at least one officer?", Answer(math.comb(n, k) - math.comb(n - m, k)))


def _product(ranges: list[range]) -> list[tuple[int, ...]]:
  rolls: list[tuple[int, ...]] = [()]
  for faces in ranges:
    rolls = [roll + (face,) for roll in rolls for face in faces]
  return rolls


def _divisor_count(n: int) -> int:
  count, d = 1, 2
  while d * d <= n:
    power = 0
    while n % d == 0:
      n //= d
      power += 1
    count *= power + 1
    d += 1
  return count * (2 if n > 1 else 1)


def _number_theory(rng: random.Random, level: int) -> tuple[str, Answer]:
  if level == 1:
    g = rng.randint(2, 15)
    a, b = g * rng.randint(2, 20), g * rng.randint(2, 20)
    return f"What is the greatest common divisor of ${a}$ and ${b}$?", Answer(math.gcd(a, b))
  if level == 2:
    a, b = rng.randint(4, 60), rng.randint(4, 60)
    return f"What is the least common multiple of ${a}$ and ${b}$?", Answer(a * b // math.gcd(a, b))
  if level == 3:
    a, k, m = rng.randint(2, 30), rng.randint(10, 400), rng.randint(3, 23)
    return f"What is the remainder when ${a}^{{{k}}}$ is divided by ${m}$?", Answer(pow(a, k, m))
  if level == 4:
    n = rng.choice([2, 3, 5, 7]) ** rng.randint(1, 5) * rng.choice([1, 3, 5, 11, 13, 17]) * rng.randint(1, 60)
    return f"How many positive divisors does ${n}$ have?", Answer(_divisor_count(n))
  m = rng.randint(7, 120)
  a = rng.randint(2, m - 1)
  while math.gcd(a, m) != 1:
    a = rng.randint(2, m - 1)
  return (f"Find the smallest positive integer $x$ such that ${a}x \\equiv 1 \\pmod{{{m}}}$.",
          Answer(pow(a, -1, m)))


_TRIPLES = ((3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25), (20, 21, 29), (9, 40, 41), (12, 35, 37),
            (11, 60, 61), (28, 45, 53), (33, 56, 65), (16, 63, 65), (48, 55, 73), (13, 84, 85), (36, 77, 85))


def _geometry(rng: random.Random, level: int) -> tuple[str, Answer]:
  name = rng.choice(_NAMES)
  if level == 1:
    w, h = rng.randint(2, 40), rng.randint(2, 40)
    if rng.random() < 0.5:
      return (f"{name}'s garden is a rectangle ${w}$ m wide and ${h}$ m long. What is its area, in square meters?",
              Answer(w * h))
    return (f"{name} walks around a rectangular field ${w}$ m wide and ${h}$ m long. How many meters is one lap?",
            Answer(2 * (w + h)))
  if level == 2:
    b, h = rng.randint(3, 40), rng.randint(3, 40)
    thing = rng.choice(("triangular sail", "triangular flag", "triangular flower bed", "triangle"))
    return (f"{name} measures a {thing} with a base of ${b}$ units and a height of ${h}$ units. What is its area, "
            "in square units? Express your answer as a common fraction if needed.", Answer(Fraction(b * h, 2)))
  if level == 3:
    a, b, c = rng.choice(_TRIPLES)
    k = rng.randint(1, 12)
    a, b = (a, b) if rng.random() < 0.5 else (b, a)
    ask = rng.randrange(3)
    if ask == 0:
      return (f"{name} draws a right triangle with legs of length ${a * k}$ and ${b * k}$. What is the length of its "
              "hypotenuse?", Answer(c * k))
    if ask == 1:
      return (f"{name} draws a right triangle with a hypotenuse of length ${c * k}$ and one leg of length "
              f"${a * k}$. How long is the other leg?", Answer(b * k))
    return (f"A ${c * k}$-foot ladder leans against a wall. {name} puts its foot ${a * k}$ feet from the wall. How "
            "many feet up the wall does the ladder reach?", Answer(b * k))
  if level == 4:
    r = Fraction(rng.randint(1, 60), rng.choice([1, 1, 2, 3, 4, 5]))
    thing = rng.choice(("circle", "round table top", "circular pond", "round rug"))
    if rng.random() < 0.3:
      return (f"{name} measures a {thing} of diameter ${_frac(2 * r)}$. What is its area? Express your answer in "
              "terms of $\\pi$.", Answer(r * r, pi=True))
    if rng.random() < 0.5:
      return (f"{name} measures a {thing} of radius ${_frac(r)}$. What is its area? Express your answer in terms "
              "of $\\pi$.", Answer(r * r, pi=True))
    return (f"{name} measures a {thing} of radius ${_frac(r)}$. What is its circumference? Express your answer in "
            "terms of $\\pi$.", Answer(2 * r, pi=True))
  if rng.random() < 0.3:
    n = rng.randint(5, 60)
    return (f"{name} draws a regular polygon with ${n}$ sides. What is the measure, in degrees, of each interior "
            "angle? Express your answer as a common fraction if needed.", Answer(Fraction(180 * (n - 2), n)))
  r, h = rng.randint(1, 20), rng.randint(1, 30)
  return (f"{name}'s cylindrical can has radius ${r}$ cm and height ${h}$ cm. What is its volume in cubic "
          "centimeters? Express your answer in terms of $\\pi$.", Answer(r * r * h, pi=True))


GENERATORS: dict[str, Callable[[random.Random, int], tuple[str, Answer]]] = {
    "arithmetic": _arithmetic, "algebra": _algebra, "counting": _counting, "number_theory": _number_theory,
    "geometry": _geometry}


def split_of(question: str) -> str:
  """The split a question belongs to (a hash of its text)."""
  bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 10
  return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


# ---- exact grading ------------------------------------------------------------
def read_exact(text: str) -> Answer | None:
  """The exact Answer a stated answer evaluates to, or None.

  The text is evaluated by ``math_grading.read_value`` (a safe arithmetic
  reader: ``2*50`` is 100, ``3 \\cdot 4`` is 12, ``x = 4`` is 4, ``\\frac{9\\pi}{4}``
  is 9/4 pi); None when it is refused (``3 4``), not arithmetic (``\\sqrt{2}``)
  or not a rational (times pi).
  """
  reading = math_grading.read_value(text)
  if reading.status != math_grading.VALUE or reading.value.pi_power not in (0, 1):
    return None
  return Answer(reading.value.rational, pi=reading.value.pi_power == 1)


def _exact(answer: Answer) -> math_grading.ExactValue:
  return math_grading.ExactValue(answer.value, int(answer.pi))


class SyntheticTask(base.Task):
  """Generated MATH-style problems with the MATH roles and answer format."""

  name = "synthetic"
  roles = math_task.MATH_ROLES
  answer_instruction = math_task.MATH_ANSWER_INSTRUCTION
  task_rules = math_task.MATH_TASK_RULES
  decision_persona = math_task.MATH_DECISION_PERSONA
  decision_instruction = math_task.MATH_DECISION_INSTRUCTION

  def load(self, split: str = "train", n: int = 500, seed: int = 0, limit: int | None = None,
           subjects: Iterable[str] | None = None, levels: Iterable[int] | None = None) -> list[base.Problem]:
    """``n`` problems of ``split`` ('train', 'val' or 'test'), deterministic given ``seed``.

    Args:
      split: 'train', 'val' or 'test' (disjoint by construction).
      n: how many problems (``limit``, if given, caps it too).
      seed: seed of the generator.
      subjects, levels: restrict to these (default: all five of each, in turn).
    """
    if split not in SPLIT_BUCKETS:
      raise ValueError(f"unknown synthetic split {split!r}; use one of {', '.join(SPLIT_BUCKETS)}")
    subjects = tuple(subjects) if subjects is not None else SUBJECTS
    levels = tuple(levels) if levels is not None else LEVELS
    unknown = set(subjects) - set(SUBJECTS)
    if unknown or not set(levels) <= set(LEVELS):
      raise ValueError(f"subjects must be among {SUBJECTS} and levels among {LEVELS}")
    count = n if limit is None else min(n, limit)
    combos = [(s, l) for l in levels for s in subjects]
    rng = random.Random(f"hieramas-synthetic-{seed}")
    problems, seen = [], set()
    for index in range(count):
      subject, level = combos[index % len(combos)]  # equal shares of every subject and level
      for _ in range(5000):
        question, answer = GENERATORS[subject](rng, level)
        if question not in seen and split_of(question) == split:
          break
      else:
        raise RuntimeError(f"could not generate {count} distinct {split} problems of {subject} level {level}; "
                           "ask for fewer")
      seen.add(question)
      digest = hashlib.blake2b(question.encode(), digest_size=8).hexdigest()
      problems.append(base.Problem(uid=f"synthetic/{digest}", question=question, answer=answer.latex(),
                                   subject=subject, level=level, meta={"split": split, "seed": seed}))
    return problems

  def extract(self, text: str) -> str | None:
    return math_grading.extract_answer(text)

  def grade(self, problem: base.Problem, text: str) -> bool:
    found = math_grading.extract_answer_with_source(text)
    if found is None:
      return False
    stated, source = found
    reading = math_grading.graded_reading(stated, source)
    if reading is None:
      return False  # refused ("3 4", "17 + 25 = 43") or restating the question ("the answer is 17 + 25")
    if reading.status == math_grading.VALUE:
      gold = read_exact(problem.answer)
      return gold is not None and reading.value == _exact(gold)
    if source == math_grading.PHRASE or "=" in stated:
      return False  # prose the reader cannot read as a final value, or an equation ("2x = 8"), is no answer
    return math_grading.equivalent(problem.answer, stated)  # a boxed \sqrt{144} and the like

  def decision_example(self) -> list[base.Message]:
    return math_task.math_decision_example(self)

  def render_answer(self, problem: base.Problem, correct: bool, rng: random.Random) -> str:
    if correct:
      return math_task.answer_line_text(problem.answer)
    gold = read_exact(problem.answer)
    if gold is not None:
      offset = Fraction(rng.choice([-3, -2, -1, 1, 2, 3, 5]))
      if gold.value.denominator != 1 and rng.random() < 0.5:
        offset = Fraction(1, gold.value.denominator)  # a near miss: one part off
      return math_task.answer_line_text(Answer(gold.value + offset, gold.pi).latex())
    for wrong in math_grading.perturb(problem.answer, rng):
      text = math_task.answer_line_text(wrong)
      if not self.grade(problem, text):
        return text
    return "I could not finish the computation."
