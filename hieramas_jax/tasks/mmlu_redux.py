"""MMLU-Redux: 57 subjects x 100 re-annotated multiple-choice questions.

The public CSVs (``mmlu_redux/mmlu_<subject>.csv``) differ from file to file:
comma or semicolon delimiters (read from the header), columns in different
orders, one file in cp1252 rather than UTF-8, ``choices`` as a Python list
literal, ``answer`` as an index. ``error_type`` marks the re-annotation
(``ok``, ``wrong groundtruth``, ``bad question clarity``...; spelled in several
ways, normalised here); ``only_ok=True`` keeps the rows marked ok. MMLU has no
difficulty level: ``Problem.level`` is 0.
"""

from __future__ import annotations

import ast
import csv
import io
import pathlib
import random
import re
from typing import Iterable

from hieramas_jax import paths
from hieramas_jax.tasks import base
from hieramas_jax.tasks import math_grading

LETTERS = "ABCDEFGHIJ"

MMLU_ROLES = (
    base.RoleSpec("Knowledgeable Expert", "You bring broad, accurate knowledge of the subject and recall "
                  "the facts and definitions the question depends on."),
    base.RoleSpec("Critic", "You look for flaws: test each option and each argument of the team, and say "
                  "which reasoning does not hold."),
    base.RoleSpec("Mathematician", "You handle anything quantitative or logical: calculations, formal "
                  "reasoning and elimination of impossible options."),
    base.RoleSpec("Psychologist", "You bring knowledge of human behaviour, cognition and mental health."),
    base.RoleSpec("Historian", "You bring knowledge of history, chronology, and political and social context."),
    base.RoleSpec("Doctor", "You bring knowledge of medicine, biology, anatomy and health."),
    base.RoleSpec("Lawyer", "You bring knowledge of law, legal reasoning, ethics and institutions."),
    base.RoleSpec("Economist", "You bring knowledge of economics, business, finance and statistics."),
)
MMLU_ANSWER_INSTRUCTION = ("Think it through, then end your response with the line \"The answer is (X)\", "
                           "where X is the letter of the single best option.")


def normalize_error_type(value: str | None) -> str:
  """'OK ', 'Wrong_groundtruth' -> 'ok', 'wrong groundtruth'."""
  return re.sub(r"[\s_]+", " ", (value or "").strip().lower())


def format_question(question: str, choices: list[str]) -> str:
  options = "\n".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(choices))
  return f"{question.strip()}\n\n{options}"


def _read_text(path: pathlib.Path) -> str:
  raw = path.read_bytes()
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError:  # mmlu_moral_scenarios.csv is cp1252
    return raw.decode("cp1252")


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  """Rows of one MMLU-Redux CSV as dicts keyed by column name (any delimiter or order)."""
  text = _read_text(path)
  header = text.split("\n", 1)[0]
  delimiter = ";" if header.count(";") > header.count(",") else ","
  reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
  missing = {"question", "choices", "answer"} - set(reader.fieldnames or ())
  if missing:
    raise ValueError(f"{path} lacks the columns {sorted(missing)}; is it an MMLU-Redux CSV?")
  return list(reader)


def subject_of(path: pathlib.Path) -> str:
  stem = path.stem
  return stem[len("mmlu_"):] if stem.startswith("mmlu_") else stem


# ---- letter extraction ------------------------------------------------------
_BOXED_LETTER = re.compile(r"^\s*(?:\\text(?:bf)?\{)?\s*\(?([A-Ja-j])\)?\s*\}?\s*$")
# "answer is (B)", "Answer: **B**", "correct option is b." ...
_ANSWER_PHRASE = re.compile(
    r"(?i)\b(?:answer|correct\s+(?:option|choice))\s*(?:is|would\s+be|should\s+be|:)?\s*:?\s*"
    r"(?:option\s+|choice\s+)?(\*\*|\()?\s*\(?([A-J])\b(\)|\*\*)?(?P<after>[^\n]{0,12})")
_LINE_LETTER = re.compile(r"^(?:\*\*)?(\()?([A-Ja-j])(\)|\*\*|[.:])?(?:\*\*)?(?=\s|$)")
# After an upper-case "A" (or "I"), these words keep it a letter ("A because..."),
# anything else lower case reads as the English word ("A bit...").
_AFTER_LETTER_WORDS = {"because", "since", "as", "and", "or", "is", "was", "which", "for", "given", "due",
                       "from", "with", "in", "here", "then", "so", "therefore", "fits"}


def extract_letter(text: str, num_choices: int = 4) -> str | None:
  """The option letter ``text`` gives as its answer, or None when it gives none.

  Handles "The answer is (B)", ``\\boxed{B}``, "B) ...", "**B**", a first-line
  letter, and lower case when it is clearly a letter (in parentheses, bold, or
  followed by punctuation), never guessing from letters mentioned in passing.
  """
  if not text:
    return None
  valid = LETTERS[:num_choices]

  def accept(letter: str | None) -> str | None:
    return letter.upper() if letter and letter.upper() in valid else None

  boxed = math_grading.last_boxed(text)
  if boxed is not None:
    match = _BOXED_LETTER.match(boxed)
    if match and accept(match.group(1)):
      return accept(match.group(1))
  for match in reversed(list(_ANSWER_PHRASE.finditer(text))):
    letter, after = match.group(2), match.group("after")
    wrapped = bool(match.group(1) or match.group(3))
    if not wrapped:
      next_word = re.match(r"^\s?([a-z]+)", after)
      if letter.islower() and not re.match(r"^\s*(?:[.,;:!]|$)", after):
        continue  # "the answer is a tricky one": an article, not an option
      if letter in "AI" and next_word and next_word.group(1) not in _AFTER_LETTER_WORDS:
        continue  # "the answer is A bit unclear"
    if accept(letter):
      return accept(letter)
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  for line, position in ((lines[0], "first"), (lines[-1], "last")) if lines else ():
    match = _LINE_LETTER.match(line)
    if not match:
      continue
    marked = bool(match.group(1) or match.group(3))  # "(b)", "b)", "**b**", "b."
    alone = len(line) == len(match.group(0))
    if position == "last" and not alone:
      continue  # only a bare letter on the last line counts
    if marked or alone or match.group(2).isupper() and line[len(match.group(0)):].startswith(" -"):
      if accept(match.group(2)):
        return accept(match.group(2))
  return None


class MMLUReduxTask(base.Task):
  """MMLU-Redux with the eight roles of the paper."""

  name = "mmlu_redux"
  roles = MMLU_ROLES
  answer_instruction = MMLU_ANSWER_INSTRUCTION

  def load(self, split: str = "test", path: str | pathlib.Path | None = None, limit: int | None = None,
           subjects: Iterable[str] | None = None, only_ok: bool = False) -> list[base.Problem]:
    """Rows of the 57 CSVs (or of ``path``: a folder of them or one CSV).

    Args:
      split: 'test' (or 'all'): MMLU-Redux has one split; carve others with
        ``tasks.split_problems``.
      path: a folder of ``mmlu_*.csv`` files or a single CSV.
      limit: keep the first ``limit`` problems (after filtering).
      subjects: keep only these subjects (e.g. 'anatomy').
      only_ok: keep only rows whose error_type is ok.
    """
    if split not in ("test", "all"):
      raise ValueError(f"MMLU-Redux has only the split 'test' (alias 'all'), not {split!r}; "
                       "use tasks.split_problems to carve train/val parts")
    if path is None:
      folder = paths.require_data_file("mmlu_redux")
      files = sorted(folder.glob("*.csv"))
    else:
      path = pathlib.Path(path)
      files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
      if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a folder of MMLU-Redux CSVs or one CSV file")
    if not files:
      raise FileNotFoundError(f"no MMLU-Redux CSV files found in {path or folder}")
    wanted = {s.lower() for s in subjects} if subjects is not None else None
    problems = []
    for file in files:
      subject = subject_of(file)
      if wanted is not None and subject.lower() not in wanted:
        continue
      for row_index, row in enumerate(read_csv(file)):
        error_type = normalize_error_type(row.get("error_type"))
        if only_ok and error_type != "ok":
          continue
        choices = [str(c) for c in ast.literal_eval(row["choices"])]
        answer_index = int(str(row["answer"]).strip())
        if not 0 <= answer_index < len(choices):
          raise ValueError(f"{file} row {row_index}: answer index {answer_index} out of range")
        problems.append(base.Problem(
            uid=f"mmlu_redux/{subject}/{row_index}", question=format_question(row["question"], choices),
            answer=LETTERS[answer_index], subject=subject, level=0,
            meta={"choices": choices, "error_type": error_type,
                  "correct_answer": (row.get("correct_answer") or "").strip(), "question": row["question"]}))
    return problems[:limit] if limit is not None else problems

  def extract(self, text: str) -> str | None:
    return extract_letter(text)

  def grade(self, problem: base.Problem, text: str) -> bool:
    num_choices = len(problem.meta.get("choices", ())) or 4
    return extract_letter(text, num_choices) == problem.answer

  def render_answer(self, problem: base.Problem, correct: bool, rng: random.Random) -> str:
    num_choices = len(problem.meta.get("choices", ())) or 4
    letter = problem.answer
    if not correct:
      letter = rng.choice([c for c in LETTERS[:num_choices] if c != problem.answer])
    return f"Weighing the options against each other, one fits best.\nThe answer is ({letter})"
