"""Answer extraction and equivalence for MATH-style answers.

Extraction takes the last ``\\boxed{...}`` (nested braces, ``\\fbox``, ``\\boxed 5``
without braces) or, failing that, the value of the last "The answer is ...".
Equivalence is decided by ``math-verify`` after a light normalisation of what it
handles less well; an exact fraction comparison answers the common simple cases
without it.

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

import dataclasses
import fractions
import functools
import logging
import random
import re
import threading
from typing import Any

MAX_ANSWER_CHARS = 1000  # longer "answers" are compared as strings only

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_SPACES = re.compile(r"\s*")
_BOXED_TOKEN = re.compile(r"\s*([^\s$]+)")
_ANSWER_IS = re.compile(r"(?i)(?:final\s+answer|the\s+answer|answer)\s*(?:is|:)\s*:?\s*(.+)")


def _closing_braces(text: str) -> dict[int, int]:
  """Position of each ``{`` -> position of its ``}``, in one pass (``\\{`` and ``\\\\`` are escapes)."""
  closing, open_positions, i = {}, [], 0
  while i < len(text):
    char = text[i]
    if char == "\\":  # a command or escape such as \{ or \\: skip the next character
      i += 2
      continue
    if char == "{":
      open_positions.append(i)
    elif char == "}" and open_positions:
      closing[open_positions.pop()] = i
    i += 1
  return closing


def all_boxed(text: str) -> list[tuple[int, int, str]]:
  """``(start, end, content)`` of every ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x``, in order.

  Nested braces are matched; an unbalanced ``\\boxed{`` is skipped.
  """
  found, closing = [], None
  for match in _BOXED.finditer(text):
    brace = _SPACES.match(text, match.end()).end()
    if text.startswith("{", brace):
      if closing is None:
        closing = _closing_braces(text)
      if brace in closing:
        found.append((match.start(), closing[brace] + 1, text[brace + 1:closing[brace]].strip()))
    elif text.startswith(" ", match.end()):  # \boxed 5
      token = _BOXED_TOKEN.match(text, match.end())
      if token:
        found.append((match.start(), token.end(), token.group(1).rstrip(".,;")))
  return found


def last_boxed(text: str) -> str | None:
  """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in ``text``."""
  found = all_boxed(text)
  return found[-1][2] if found else None


BOXED, PHRASE = "boxed", "phrase"  # where an extracted answer came from
# Where the value of an "answer is ..." line ends: a clause ("42, since ...",
# "42 because ..."), a sentence ("42. Let me check"), or a semicolon.
_CLAUSE_END = re.compile(r",\s+(?=[a-zA-Z]{2})|;|\.(?=\s|$)|\s+(?:because|since|as|which|where|given|but|so)\b")
_MATH_DELIMITED = re.compile(r"\$\$?((?:\\.|[^\\$])+)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]")


def _answer_phrase(text: str) -> str | None:
  """The value of the last "The answer is ..." / "Final answer: ..." in ``text``."""
  matches = list(_ANSWER_IS.finditer(text))
  if not matches:
    return None
  answer = matches[-1].group(1)
  inner = _ANSWER_IS.search(answer)
  while inner:  # "Final Answer: The final answer is $7$. I hope it is correct."
    answer = inner.group(1)
    inner = _ANSWER_IS.search(answer)
  answer = re.sub(r"\*\*|__", "", answer).strip()  # markdown bold: **42**
  delimited = _MATH_DELIMITED.match(answer)
  if delimited:  # $\frac{3}{4}$, \(42\), $$42$$: the math part is the answer
    answer = next(group for group in delimited.groups() if group is not None)
  else:
    answer = _CLAUSE_END.split(answer, maxsplit=1)[0]
  answer = answer.rstrip(" .").strip("$ ").strip()
  return answer or None


def extract_answer_with_source(text: str) -> tuple[str, str] | None:
  """``(answer, source)``: the last ``\\boxed{}`` (``BOXED``), else the last "The answer is" (``PHRASE``)."""
  if not text:
    return None
  boxed = last_boxed(text)
  if boxed:
    return boxed, BOXED
  phrase = _answer_phrase(text)
  return (phrase, PHRASE) if phrase else None


def extract_answer(text: str) -> str | None:
  """The final answer stated in ``text``, or None."""
  found = extract_answer_with_source(text)
  return found[0] if found else None


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
  """The rational value of a plain number, ``a/b`` or ``\\frac{a}{b}``, else None (``3 4`` is not 34)."""
  s = re.sub(r"(?<!\d)\s+|\s+(?!\d)", "", answer)  # spaces go, except between two digits
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


# ---- exact arithmetic reading ---------------------------------------------------
# A tiny recursive-descent reader of arithmetic answers (numbers, + - * / ^,
# \cdot, \times, \div, \frac, parentheses, braces and pi). It never runs code
# and never joins digits: an answer is read to its exact value, refused, or
# reported unreadable (a letter, \sqrt, ...) for math-verify to judge.
VALUE, REFUSED, UNREADABLE = "value", "refused", "unreadable"
MAX_READ_CHARS = 300  # longer answers are not read by the arithmetic reader
_MAX_DEPTH = 40  # nesting of parentheses, braces and \frac
_MAX_RESULT_BITS = 4096  # a power whose result would be larger is not computed


class _Refused(ValueError):
  """The answer is malformed or ambiguous (``3 4``, unbalanced brackets, a division by zero)."""


class _Unreadable(ValueError):
  """The answer uses something the arithmetic reader does not know (a letter, \\sqrt, ...)."""


class ExactValue(tuple):
  """``rational * pi**pi_power``, exactly; zero always has ``pi_power`` 0."""

  __slots__ = ()

  def __new__(cls, rational: fractions.Fraction | int, pi_power: int = 0):
    rational = fractions.Fraction(rational)
    return super().__new__(cls, (rational, pi_power if rational else 0))

  @property
  def rational(self) -> fractions.Fraction:
    return self[0]

  @property
  def pi_power(self) -> int:
    return self[1]


@dataclasses.dataclass(frozen=True)
class Reading:
  """What the arithmetic reader made of a stated answer.

  Attributes:
    status: ``VALUE`` (read exactly), ``REFUSED`` (malformed, ambiguous or
      self-contradicting: graded wrong) or ``UNREADABLE`` (beyond the reader:
      letters, roots, sets, intervals, equations such as ``2x = 8``...).
    value: the exact value when ``status`` is ``VALUE``.
    plain: whether the stated value is a final value (a number, decimal,
      fraction or rational multiple of a power of pi) rather than an
      operation still to carry out (``17 + 25``, ``2 \\cdot 50``, ``2^{10}``).
    final: the text of the last side of an equality chain (``x = 4`` -> ``4``).
    reason: why it was refused or not read.
  """

  status: str
  value: ExactValue | None = None
  plain: bool = False
  final: str = ""
  reason: str = ""


_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<command>\\[a-zA-Z]+)|(?P<pi>(?<![a-zA-Z])pi(?![a-zA-Z]))"
                    r"|(?P<op>[-+*/^(){}\[\]])|(?P<other>\S))")
_MULTIPLY = {"*", "\\cdot", "\\times"}
_DIVIDE = {"/", "\\div"}
_CLOSING = {"(": ")", "{": "}", "[": "]"}
_KNOWN_COMMANDS = {"\\frac", "\\pi"} | _MULTIPLY | _DIVIDE


def _tokens(text: str) -> list[str]:
  tokens, position = [], 0
  text = text.rstrip()
  while position < len(text):
    match = _TOKEN.match(text, position)
    position = match.end()
    if match.group("number") is not None:
      if len(match.group("number")) > 100:
        raise _Unreadable("a number of more than 100 digits")
      tokens.append(match.group("number"))
    elif match.group("pi"):
      tokens.append("\\pi")
    elif match.group("other") is not None:
      raise _Unreadable(f"{match.group('other')!r} is not arithmetic")
    elif match.group("command") is not None and match.group("command") not in _KNOWN_COMMANDS:
      raise _Unreadable(f"{match.group('command')} is not arithmetic")  # \sqrt, \pm, \cot, ...
    else:
      tokens.append(match.group("command") or match.group("op"))
  return tokens


def _add(a: ExactValue, b: ExactValue) -> ExactValue:
  if a.rational and b.rational and a.pi_power != b.pi_power:
    raise _Unreadable("a sum of different powers of pi")
  return ExactValue(a.rational + b.rational, a.pi_power if a.rational else b.pi_power)


def _multiply(a: ExactValue, b: ExactValue) -> ExactValue:
  return ExactValue(a.rational * b.rational, a.pi_power + b.pi_power)


def _divide(a: ExactValue, b: ExactValue) -> ExactValue:
  if not b.rational:
    raise _Refused("a division by zero")
  return ExactValue(a.rational / b.rational, a.pi_power - b.pi_power)


def _power(base: ExactValue, exponent: ExactValue) -> ExactValue:
  if exponent.pi_power or exponent.rational.denominator != 1:
    raise _Unreadable("a power with a non-integer exponent")
  n = int(exponent.rational)
  size = max(base.rational.numerator.bit_length(), base.rational.denominator.bit_length(), 1)
  if abs(n) > 10_000 or size * abs(n) > _MAX_RESULT_BITS:
    raise _Unreadable("a power too large to compute")
  if n < 0 and not base.rational:
    raise _Refused("a division by zero")
  return ExactValue(base.rational ** n, base.pi_power * n)


class _Reader:
  """Recursive descent over the tokens; one instance per answer."""

  def __init__(self, tokens: list[str]):
    self.tokens, self.i, self.depth = tokens, 0, 0

  def peek(self) -> str | None:
    return self.tokens[self.i] if self.i < len(self.tokens) else None

  def take(self) -> str:
    token = self.peek()
    if token is None:
      raise _Refused("the expression ends early")
    self.i += 1
    return token

  def read(self) -> ExactValue:
    if not self.tokens:
      raise _Unreadable("no expression")
    value = self.sum()
    if self.peek() is not None:
      raise _Refused(f"{self.peek()!r} cannot follow a complete expression")
    return value

  def sum(self) -> ExactValue:
    value = self.product()
    while self.peek() in ("+", "-"):
      sign = self.take()
      right = self.product()
      value = _add(value, right if sign == "+" else ExactValue(-right.rational, right.pi_power))
    return value

  def product(self) -> ExactValue:
    value = self.signed()
    while True:
      token = self.peek()
      if token in _MULTIPLY:
        self.take()
        value = _multiply(value, self.signed())
      elif token in _DIVIDE:
        self.take()
        value = _divide(value, self.signed())
      elif token in ("\\pi", "("):  # 12\pi, 2(3 + 4): implicit multiplication
        value = _multiply(value, self.power())
      elif token is not None and (token[0].isdigit() or token in ("{", "\\frac")):
        # "3 4" is neither 34 nor 12; "3\frac{1}{2} + 1" may hold a mixed number or a product: refuse both.
        raise _Refused("two numbers side by side with no operation between them")
      else:
        return value

  def signed(self) -> ExactValue:
    if self.peek() in ("+", "-"):
      negative = self.take() == "-"
      value = self.signed()
      return ExactValue(-value.rational, value.pi_power) if negative else value
    return self.power()

  def power(self) -> ExactValue:
    base = self.atom()
    if self.peek() == "^":
      self.take()
      exponent = self.group() if self.peek() in _CLOSING else self.atom()
      return _power(base, exponent)
    return base

  def group(self) -> ExactValue:
    opening = self.take()
    if opening not in _CLOSING:
      raise _Unreadable(f"expected a group, found {opening!r}")
    self.depth += 1
    if self.depth > _MAX_DEPTH:
      raise _Unreadable("nested too deeply")
    value = self.sum()
    if self.take() != _CLOSING[opening]:
      raise _Refused("unbalanced brackets")
    self.depth -= 1
    return value

  def atom(self) -> ExactValue:
    token = self.peek()
    if token is None:
      raise _Refused("the expression ends early")
    if token[0].isdigit():
      self.take()
      return ExactValue(fractions.Fraction(token))
    if token == "\\pi":
      self.take()
      return ExactValue(1, 1)
    if token in _CLOSING:
      return self.group()
    if token == "\\frac":
      self.take()
      if self.peek() != "{":
        raise _Unreadable("\\frac without braces")
      numerator = self.group()
      if self.peek() != "{":
        raise _Unreadable("\\frac without a braced denominator")
      return _divide(numerator, self.group())
    raise _Unreadable(f"{token!r} is not arithmetic")


def _arithmetic_text(answer: str) -> str:
  """``answer`` normalised for the reader: units, percent, \\text{} and layout removed."""
  s = normalize(answer)
  s = s.translate(_UNICODE_MATH)
  s = re.sub(r"\\(?:displaystyle|textstyle)\b", "", s)
  s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)  # \frac12
  s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}a-zA-Z]*)\}", r"{\1}", s)  # \text{4}
  s = re.sub(r"\s*\\?%$", "", s)  # 5\% (percent read as a unit, as MATH answers write it)
  previous = None
  while previous != s:  # trailing units: "42 apples", "12\pi \text{ cm}^3", "30 square meters"
    previous = s
    s = re.sub(r"(?:(?<=[\d})\]])|(?<=\\pi))\s*(?:\\(?:text|mathrm|mbox)\{\s*[a-zA-Z ]*\}|\s(?!pi\b)[a-zA-Z]{2,})"
               r"\s*(?:\^\s*\{?\d\}?)?$", "", s).rstrip()
  return s.strip()


_UNICODE_MATH = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ",
                               "\u22c5": "\\cdot ", "\u00f7": "\\div ", "\u03c0": "\\pi "})
_N = r"\d+(?:\.\d+)?"
_PI_POWER = r"\\pi(?:\^\{?\d+\}?)?"
_PLAIN = re.compile(
    rf"-?(?:{_N}(?:(?:\\cdot|\*)?{_PI_POWER})?|{_N}/{_N}|\d+\\frac\{{\d+\}}\{{\d+\}}|(?:{_N})?{_PI_POWER}/{_N}"
    rf"|\\frac\{{-?{_N}\}}\{{-?{_N}\}}(?:{_PI_POWER})?|\\frac\{{(?:{_N})?{_PI_POWER}\}}\{{{_N}\}}"
    rf"|\\frac\{{{_N}\}}\{{(?:{_N})?{_PI_POWER}\}}|{_PI_POWER})")
# A power of integers is a final value only when its digits are too many to write out (2^{2005}).
_LARGE_POWER = re.compile(r"-?\d+\^\{?\d+\}?")
_LARGE = 10 ** 15


def _unwrap(s: str) -> str:
  """``(-3)`` -> ``-3``, ``{4}`` -> ``4``: outer brackets that enclose everything."""
  while len(s) >= 2 and s[0] in _CLOSING and s[-1] == _CLOSING[s[0]]:
    depth = 0
    for i, char in enumerate(s):
      depth += char in _CLOSING
      depth -= char in _CLOSING.values()
      if depth == 0 and i < len(s) - 1:
        return s  # "(1)(2)": the first bracket closes before the end
    s = s[1:-1].strip()
  return s


def is_plain_value(text: str) -> bool:
  """Whether ``text`` states a final value: ``42``, ``-0.5``, ``\\frac{3}{4}``, ``3/4``, ``12\\pi``, ``\\frac{9\\pi}{4}``."""
  return bool(_PLAIN.fullmatch(_unwrap(_arithmetic_text(text).replace(" ", ""))))


def _top_level_split(text: str, separator: str) -> list[str]:
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += char in "({["
    depth -= char in ")}]"
    if char == separator and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return parts


_MIXED = re.compile(r"(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")


def _evaluate(text: str) -> ExactValue:
  s = _arithmetic_text(text)
  if len(s) > MAX_READ_CHARS:
    raise _Unreadable(f"longer than {MAX_READ_CHARS} characters")
  mixed = _MIXED.fullmatch(s)
  if mixed and int(mixed.group(4)):  # 6\frac{3}{4} is 6 + 3/4, as MATH writes mixed numbers
    sign = -1 if mixed.group(1) else 1
    return ExactValue(sign * (int(mixed.group(2)) + fractions.Fraction(int(mixed.group(3)), int(mixed.group(4)))))
  return _Reader(_tokens(s)).read()


def _is_name(side: str) -> bool:
  """A side that names the quantity (``x``, ``x + y``, ``A``, ``\\text{area}``): letters, no digits."""
  s = re.sub(r"_\{[^{}]*\}|_\w", "", side)  # subscripts: x_1, V_{cyl}
  return bool(re.search(r"[a-zA-Z]", s)) and not re.search(r"\d", s)


def read_value(answer: str) -> Reading:
  """Reads a stated answer to its exact value, refuses it, or reports it unreadable.

  An equality chain (``x = 4``, ``17 + 25 = 42``, ``A = \\pi r^2 = 9\\pi``) is
  read to its last side; every other side must name the quantity (letters
  only), be an expression that cannot be read (a formula), or read to the same
  value: a chain that contradicts itself (``17 + 25 = 43``) is refused; one
  that starts with an expression in an unknown (``2x = 8``) is an equation,
  not a value, and is unreadable. ``\\approx`` and what follows it are dropped
  (the exact value comes first). A mixed number (``6\\frac{1}{4}``) is 6 + 1/4,
  as MATH writes them.
  """
  if answer is None:
    return Reading(REFUSED, reason="no answer")
  text = re.split(r"\\approx|\u2248", normalize(answer))[0]
  sides = [side.strip() for side in _top_level_split(text, "=")]
  final = sides[-1]
  if not final:
    return Reading(REFUSED, reason="nothing after the last '='")
  values = []
  for index, side in enumerate(sides):
    is_final = index == len(sides) - 1
    if not is_final and _is_name(side):
      continue
    try:
      values.append(_evaluate(side))
    except _Refused as e:
      return Reading(REFUSED, final=final, reason=str(e))
    except _Unreadable as e:
      if is_final:
        return Reading(UNREADABLE, final=final, reason=str(e))
      if index == 0 and re.search(r"\d", side) and re.search(r"(?<!\\)\b[a-zA-Z]\b|\d[a-zA-Z]", side):
        # "2x = 8", "5x - 7y + 4 = 0": an equation, not a value (MATH answers may be equations).
        return Reading(UNREADABLE, final=final, reason="an equation in an unknown")
  if any(v != values[-1] for v in values):
    return Reading(REFUSED, final=final, reason="the sides of the equality chain differ")
  value = values[-1]
  plain = is_plain_value(final) or (bool(_LARGE_POWER.fullmatch(_arithmetic_text(final).replace(" ", "")))
                                    and abs(value.rational) >= _LARGE)
  return Reading(VALUE, value, plain, final)


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
  if answer is None:
    return None
  reading = read_value(answer)
  if reading.status == REFUSED:
    return None
  if reading.status == VALUE:
    if source == PHRASE and not reading.plain:
      return None
    return reading.final
  return answer


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
