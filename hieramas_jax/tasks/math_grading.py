"""Answer extraction, grading and equivalence for MATH-style answers: the one import tasks use.

Extraction takes the last ``\\boxed{...}`` (nested braces, ``\\fbox``, ``\\boxed 5``
without braces) or, failing that, the value of the last "The answer is ...".
Equivalence is decided by ``math-verify`` after a light normalisation of what it
handles less well; an exact fraction comparison answers the common simple cases
without it. Extraction and normalisation live in ``math_answers``, the exact
arithmetic reader in ``math_arithmetic``; their public names are re-exported here.

Arithmetic answers are graded by value or not at all: ``read_value`` is a tiny
exact reader (numbers, ``+ - * / ^``, ``\\cdot``, ``\\times``, ``\\frac``, pi; no
``eval``) that never joins digits (``3 4`` and ``3 \\cdot 4`` are not ``34``),
refuses self-contradicting chains (``17 + 25 = 43``), and, through
``graded_answer``, refuses an unevaluated operation found only by the "The
answer is" fallback (``the answer is 17 + 25`` restates the question).

``math-verify`` guards its sympy work with ``signal.alarm``, which only works in
the main thread and cannot interrupt a long computation inside C (a power tower
such as ``9^{9^{9^9}}`` holds the interpreter). So answers that could be that
costly (exponent towers, huge exponents or literals, large factorials, sums,
products, integrals, limits) and answers over ``MAX_ANSWER_CHARS`` skip
math-verify and are compared as normalised strings.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import threading
from typing import Any

from hieramas_jax.tasks.math_answers import BOXED, PHRASE, all_boxed, exact_value, extract_answer
from hieramas_jax.tasks.math_answers import extract_answer_with_source, last_boxed, normalize
from hieramas_jax.tasks.math_arithmetic import MAX_READ_CHARS, REFUSED, UNREADABLE, VALUE, ExactValue, Reading
from hieramas_jax.tasks.math_arithmetic import is_plain_value, read_value

__all__ = [
    "BOXED", "PHRASE", "all_boxed", "exact_value", "extract_answer", "extract_answer_with_source", "last_boxed",
    "normalize", "MAX_READ_CHARS", "REFUSED", "UNREADABLE", "VALUE", "ExactValue", "Reading", "is_plain_value",
    "read_value", "MAX_ANSWER_CHARS", "too_costly", "equivalent", "graded_reading", "graded_answer",
    "perturb",
]

MAX_ANSWER_CHARS = 1000  # longer "answers" are compared as strings only


def _loose(answer: str) -> str:
  s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", answer)
  return re.sub(r"[\s{}()\\]", "", s).lower()


def _numbers(answer: str) -> list[str]:
  return re.findall(r"\d+(?:\.\d+)?", answer)


def _loosely_equal(gold: str, predicted: str) -> bool:
  """Equal once layout is dropped (``\\text{Monday}`` = ``Monday``), with the same numbers in the same order.

  Dropping spaces and brackets must never join numbers: ``3 4`` or ``(3)(4)``
  is not ``34``.
  """
  return bool(_loose(gold)) and _loose(gold) == _loose(predicted) and _numbers(gold) == _numbers(predicted)


_EXPONENT = re.compile(r"\^\s*(\{(?:[^{}]|\{[^{}]*\})*\}|\\?[\w.]+)")


def too_costly(answer: str) -> bool:
  """Whether sympy might take unbounded time or memory on ``answer``."""
  if re.search(r"\d{40,}", answer) or re.search(r"\\(?:sum|prod|int|oint|lim)\b", answer):
    return True
  if re.search(r"\^\s*(?:\w|\{[^{}]*\})\s*\^", answer):  # a^b^c
    return True
  for match in _EXPONENT.finditer(answer):
    exponent = match.group(1)
    if "^" in exponent or "!" in exponent or any(len(d) > 4 for d in re.findall(r"\d+", exponent)):
      return True
  for match in re.finditer(r"(\d*)\s*\\?!", answer):
    if not match.group(1) or int(match.group(1)) > 5000:  # a factorial of an expression or a large number
      return True
  return False


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


@functools.lru_cache(maxsize=8192)
def _parse(answer: str, timeout_s: int) -> tuple[Any, ...]:
  import math_verify  # heavy (sympy): imported on first use

  logging.getLogger("math_verify").setLevel(logging.ERROR)
  try:
    return tuple(math_verify.parse("\\boxed{" + answer + "}", parsing_timeout=timeout_s or None))
  except Exception:  # noqa: BLE001 (math-verify may raise on odd input, incl. its own timeouts)
    return ()


def equivalent(gold: str, predicted: str | None, timeout_s: int = 5, shortcuts: bool = True) -> bool:
  """Whether ``predicted`` is mathematically the same answer as ``gold``.

  ``shortcuts=False`` skips the string and exact-fraction fast paths (to test
  the math-verify path alone).
  """
  if predicted is None:
    return False
  gold_n, pred_n = normalize(gold), normalize(predicted)
  if not pred_n:
    return False
  if shortcuts:
    if gold_n == pred_n:
      return True
    gold_v, pred_v = exact_value(gold_n), exact_value(pred_n)
    if gold_v is not None and pred_v is not None and gold_v == pred_v:
      return True
  if read_value(gold_n).status == REFUSED or read_value(pred_n).status == REFUSED:
    return False  # "3 4" (math-verify reads 7), "17 + 25 = 43": never mangled into a number
  if max(len(gold_n), len(pred_n)) > MAX_ANSWER_CHARS or too_costly(gold_n) or too_costly(pred_n):
    return _loosely_equal(gold_n, pred_n)
  timeout = timeout_s if _in_main_thread() else 0
  gold_parsed, pred_parsed = _parse(gold_n, timeout), _parse(pred_n, timeout)
  if gold_parsed and pred_parsed:
    import math_verify

    try:
      if math_verify.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout or None):
        return True
    except Exception:  # noqa: BLE001 (timeouts and sympy errors count as not equivalent)
      pass
  return _loosely_equal(gold_n, pred_n)


def graded_reading(answer: str | None, source: str = BOXED) -> Reading | None:
  """``read_value`` of a stated answer, or None when it must be graded wrong (see ``graded_answer``)."""
  if answer is None:
    return None
  reading = read_value(answer)
  if reading.status == REFUSED:
    return None  # "3 4", "17 + 25 = 43": never mangled into a number
  if reading.status == VALUE and source == PHRASE and not reading.plain:
    return None  # "the answer is 17 + 25" restates the question; a final value is needed
  return reading


def graded_answer(answer: str | None, source: str = BOXED) -> str | None:
  """The stated answer to compare with the reference, or None when it must be graded wrong.

  Arithmetic is graded by value or not at all (``read_value``): an answer the
  reader refuses (``3 4``, ``17 + 25 = 43``, ``2x = 8``) is wrong, and an
  equality chain gives its last side (``x = 4`` -> ``4``). A boxed answer is
  the model's committed result and is compared by value whatever its form
  (``\\boxed{2 \\cdot 50}`` is 100). An answer found only by the "The answer
  is ..." fallback must be a final value: prose such as "the answer is
  17 + 25" restates the question's operands rather than answering, so an
  operation still to carry out there is graded wrong. Answers beyond the
  reader (roots, letters, sets, intervals) are returned unchanged for
  ``equivalent``.
  """
  reading = graded_reading(answer, source)
  if reading is None:
    return None
  return reading.final if reading.status == VALUE else answer


def perturb(answer: str, rng: random.Random) -> list[str]:
  """Plausible wrong answers for ``answer`` (a changed number, a flipped sign...), best first."""
  candidates = []
  numbers = list(re.finditer(r"\d+(?:\.\d+)?", answer))
  if numbers:
    for _ in range(4):
      match = rng.choice(numbers)
      text = match.group(0)
      if "." in text:
        new = f"{float(text) + rng.choice([1, 2, 0.5]):g}"
      else:
        value = int(text)
        new = str(value + rng.choice([1, 2, 3, 5, 10]) if value < 10 ** 15 else value * 3 + 1)
      candidates.append(answer[:match.start()] + new + answer[match.end():])
  value = exact_value(normalize(answer))
  if value is not None:
    candidates.append(str(value * 2 + 1) if value.denominator == 1 else
                      f"\\frac{{{value.numerator + 1}}}{{{value.denominator}}}")
  candidates.append(answer[1:] if answer.startswith("-") else "-" + answer)
  candidates.extend(["2", "\\text{none}"])
  return candidates
