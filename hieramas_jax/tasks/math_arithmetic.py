"""Exact arithmetic reading of stated answers: graded by value or refused.

A tiny recursive-descent reader of arithmetic answers (numbers, ``+ - * / ^``,
``\\cdot``, ``\\times``, ``\\div``, ``\\frac``, parentheses, braces and pi). It never
runs code (no ``eval``) and never joins digits (``3 4`` and ``3 \\cdot 4`` are not
``34``): an answer is read to its exact value, refused (malformed, ambiguous or
self-contradicting, such as ``17 + 25 = 43``), or reported unreadable (a letter,
``\\sqrt``, ...) for math-verify to judge.
"""

from __future__ import annotations

import dataclasses
import fractions
import re

from hieramas_jax.tasks.math_answers import normalize

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
  """Whether ``text`` states a final value.

  ``42``, ``-0.5``, ``\\frac{3}{4}``, ``3/4``, ``12\\pi`` and ``\\frac{9\\pi}{4}`` do.
  """
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
