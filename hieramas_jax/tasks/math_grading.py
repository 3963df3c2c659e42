"""Answer extraction and equivalence for MATH-style answers.

Extraction takes the last ``\\boxed{...}`` (nested braces, ``\\fbox``, ``\\boxed 5``
without braces) or, failing that, the last "The answer is ...". Equivalence is
decided by ``math-verify`` after a light normalisation of what it handles less
well; an exact fraction comparison answers the common simple cases without it.

``math-verify`` guards its sympy work with ``signal.alarm``, which only works in
the main thread and cannot interrupt a long computation inside C (a power tower
such as ``9^{9^{9^9}}`` holds the interpreter). So answers that could be that
costly (exponent towers, huge exponents or literals, large factorials, sums,
products, integrals, limits) and answers over ``MAX_ANSWER_CHARS`` skip
math-verify and are compared as normalised strings.
"""

from __future__ import annotations

import fractions
import functools
import logging
import random
import re
import threading
from typing import Any

MAX_ANSWER_CHARS = 1000  # longer "answers" are compared as strings only

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_IS = re.compile(r"(?i)(?:final\s+answer|the\s+answer|answer)\s*(?:is|:)\s*:?\s*(.+)")


def last_boxed(text: str) -> str | None:
  """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in ``text``."""
  matches = list(_BOXED.finditer(text))
  for match in reversed(matches):
    rest = text[match.end():]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
      start = match.end() + (len(rest) - len(stripped)) + 1
      depth, i = 1, start
      while i < len(text):
        char = text[i]
        if char == "\\":  # a command or escape such as \{ or \\: skip the next character
          i += 2
          continue
        if char == "{":
          depth += 1
        elif char == "}":
          depth -= 1
          if depth == 0:
            return text[start:i].strip()
        i += 1
      continue  # unbalanced: try an earlier one
    if rest[:1] == " ":  # \boxed 5
      token = re.match(r"\s*([^\s$]+)", rest)
      if token:
        return token.group(1).rstrip(".,;")
  return None


def extract_answer(text: str) -> str | None:
  """The final answer stated in ``text``, or None."""
  if not text:
    return None
  boxed = last_boxed(text)
  if boxed:
    return boxed
  matches = list(_ANSWER_IS.finditer(text))
  if not matches:
    return None
  answer = matches[-1].group(1).strip()
  answer = answer.strip("*").strip()
  if answer.startswith("$") and "$" in answer[1:]:
    answer = answer[1:answer.index("$", 1)]
  answer = answer.rstrip(" .").strip("$ ").strip()
  return answer or None


def _strip_text_units(answer: str) -> str:
  # "5\text{ cm}" -> "5"; a bare "\text{Monday}" keeps its words.
  stripped = re.sub(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}\s*(\^\{?\d\}?)?\s*$", "", answer).strip()
  if stripped and re.search(r"[\d}]\s*$", stripped):
    return stripped
  return answer


def normalize(answer: str) -> str:
  """A canonical spelling for the forms math-verify needs help with."""
  s = answer.strip()
  if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
    s = s.strip("$")
  s = s.rstrip(".").strip()
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
  s = s.replace("\\!", "").replace("\\,", " ").replace("\\;", " ").replace("\\ ", " ")
  s = s.replace("\\$", "").replace("$", "")
  s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree", "", s)
  s = s.replace("{,}", ",")
  s = _strip_text_units(s)
  if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # 1,000 -> 1000
    s = s.replace(",", "")
  s = re.sub(r"(?<![\d.])0+(?=\d)", "", s)  # leading zeros: 007 -> 7
  s = re.sub(r"(?<![\d])\.(\d)", r"0.\1", s)  # .5 -> 0.5
  return re.sub(r"\s+", " ", s).strip()


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")


def exact_value(answer: str) -> fractions.Fraction | None:
  """The rational value of a plain number, ``a/b`` or ``\\frac{a}{b}``, else None."""
  s = answer.replace(" ", "")
  try:
    if _NUMBER.fullmatch(s):
      return fractions.Fraction(s)
    match = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
    if match:
      return fractions.Fraction(int(match.group(1)), int(match.group(2)))
    match = _FRAC.fullmatch(s) or re.fullmatch(r"(-?)\\frac(\d)(\d)", s)
    if match:
      sign = -1 if match.group(1) else 1
      return sign * fractions.Fraction(int(match.group(2)), int(match.group(3)))
  except (ValueError, ZeroDivisionError):
    return None
  return None


def _loose(answer: str) -> str:
  s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", answer)
  return re.sub(r"[\s{}()\\]", "", s).lower()


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
  if max(len(gold_n), len(pred_n)) > MAX_ANSWER_CHARS or too_costly(gold_n) or too_costly(pred_n):
    return _loose(gold_n) == _loose(pred_n)
  timeout = timeout_s if _in_main_thread() else 0
  gold_parsed, pred_parsed = _parse(gold_n, timeout), _parse(pred_n, timeout)
  if gold_parsed and pred_parsed:
    import math_verify

    try:
      if math_verify.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout or None):
        return True
    except Exception:  # noqa: BLE001 (timeouts and sympy errors count as not equivalent)
      pass
  return _loose(gold_n) == _loose(pred_n) and bool(_loose(gold_n))


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
