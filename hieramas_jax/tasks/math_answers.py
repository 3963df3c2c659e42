"""Reading the stated answer of a MATH-style solution, and spelling it canonically.

Extraction takes the last ``\\boxed{...}`` (nested braces, ``\\fbox``, ``\\boxed 5``
without braces) or, failing that, the value of the last "The answer is ...".
``normalize`` gives the canonical spelling that equivalence and the arithmetic
reader start from; ``exact_value`` reads plain numbers and fractions exactly.
"""

from __future__ import annotations

import fractions
import re

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
