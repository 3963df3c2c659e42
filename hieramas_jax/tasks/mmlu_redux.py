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


def _combine(insights: str) -> str:
  return f"Combine the strongest {insights} into one analysis."


# The paper's eight MMLU roles (its "Knowlegable Expert" spelled right) and
# what each synthesizer checks, in our words.
MMLU_ROLES = (
    base.RoleSpec(
        "Knowledgeable Expert",
        "You answer questions from broad, accurate knowledge: name the key entities and concepts the question "
        "turns on (the terms you would look up in an encyclopedia, such as a named effect, a person or a law; "
        "none if nothing needs looking up) and recall what is known about them.",
        synthesis_checklist=("Pick out the key concepts and entities the analyses rely on.",
                             "Check the facts each analysis states.", _combine("reasoning"))),
    base.RoleSpec(
        "Critic",
        "You are a sharp critic: go through the other analyses point by point and show where their reasoning "
        "fails.",
        synthesis_checklist=("Judge whether each critique's points are valid.", "Find the strongest objections.",
                             "Determine which option best survives this scrutiny.")),
    base.RoleSpec(
        "Mathematician",
        "You are a mathematician, strong at arithmetic, logic puzzles and planning several steps ahead.",
        synthesis_checklist=("Check the mathematical correctness of each line of reasoning.",
                             "Verify the calculations and the logical steps.", _combine("mathematical arguments"))),
    base.RoleSpec(
        "Psychologist",
        "You are a psychologist who also knows sociology and philosophy, and you give scientifically grounded "
        "advice.",
        synthesis_checklist=("Consider the cognitive and behavioural factors the analyses raise.",
                             "Judge the scientific soundness of each analysis.",
                             _combine("psychological insights"))),
    base.RoleSpec(
        "Historian",
        "You are a historian: you study the cultural, economic, political and social events of the past from "
        "primary sources and explain what happened in each period.",
        synthesis_checklist=("Check the historical facts and context.",
                             "Weigh the evidence and reasoning of each analysis.", _combine("historical insights"))),
    base.RoleSpec(
        "Doctor",
        "You are a physician: you know illnesses and their treatments, conventional and alternative, and you "
        "weigh a patient's age, lifestyle and medical history.",
        synthesis_checklist=("Check the medical accuracy of each analysis.",
                             "Take the relevant biological and health factors into account.",
                             _combine("medical insights"))),
    base.RoleSpec(
        "Lawyer",
        "You are a lawyer who knows law, politics and history.",
        synthesis_checklist=("Check the legal accuracy and reasoning of each analysis.",
                             "Consider the laws, precedents and principles that apply.", _combine("legal arguments"))),
    base.RoleSpec(
        "Economist",
        "You are an economist who knows economics, finance and business, reads charts, and follows the "
        "macroeconomic situation of the world's economies.",
        synthesis_checklist=("Check the economic reasoning and principles of each analysis.",
                             "Consider the market and financial factors involved.", _combine("economic insights"))),
)
# The paper's single-letter rule, the same words in every MMLU prompt (roles,
# synthesizers, decision node and baselines), so no prompt contradicts another.
MMLU_ANSWER_INSTRUCTION = ("Put only the letter of the correct option (A, B, C or D) on the first line of your "
                           "reply. Below it, justify your choice with brief step-by-step reasoning, in fewer than "
                           "100 words in all.")
MMLU_TASK_RULES = "The question comes with options labelled by letters, and exactly one option is correct."
MMLU_DECISION_PERSONA = ("You are the top decision-maker of a team: good at analysing and summarising other "
                         "people's opinions, finding their errors, and making the final choice.")
MMLU_DECISION_INSTRUCTION = ("Analyse the team's reasoning step by step, find its errors, and choose the option "
                             "that the soundest reasoning supports.")


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
  rows = []
  try:
    for row in reader:  # each row checked here, where its line number is known
      rows.append(row)
      problem = _row_problem(row)
      if problem:
        raise ValueError(f"{path} line {reader.line_num}: {problem}; fix or delete that row")
  except csv.Error as e:
    raise ValueError(f"{path} line {reader.line_num} is not valid CSV ({e}); fix that line") from None
  return rows


def _row_problem(row: dict[str, str]) -> str | None:
  """What makes a CSV row no MMLU question (None: nothing)."""
  if row.get("question") is None or row.get("choices") is None or row.get("answer") is None:
    return "the row has fewer columns than the header"
  try:
    choices = ast.literal_eval(row["choices"])
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    choices = None
  if not isinstance(choices, (list, tuple)) or not choices:
    return f"choices {row['choices'][:60]!r} is not a list literal such as ['a', 'b', 'c', 'd']"
  try:
    answer = int(str(row["answer"]).strip())
  except ValueError:
    return f"answer {row['answer'][:20]!r} is not a choice index (0, 1, ...)"
  if not 0 <= answer < len(choices):
    return f"answer index {answer} is out of range for {len(choices)} choices"
  return None


def subject_of(path: pathlib.Path) -> str:
  stem = path.stem
  return stem[len("mmlu_"):] if stem.startswith("mmlu_") else stem


# ---- letter extraction ------------------------------------------------------
# A reply's answer statements are collected with their positions: a boxed letter,
# an answer phrase ("The answer is (B)", "**Answer: C**", "correct option is b"),
# a choice ("I choose D", "Option D is correct"), or a letter standing as the
# first or last line. The last statement is the answer; it counts only if it
# names one letter and no other statement right before it (with no reasoning in
# between) names a different one.
_LETTER = (r"(?P<open>\*\*|\(|\[|\$?\\text(?:bf)?\{|\$)?\s*\(?(?P<letter>[A-Ja-j])\b"
           r"(?P<close>\)|\]|\*\*|\}|\$)?")
_BOXED_LETTER = re.compile(r"^\s*(?:\\text(?:bf)?\{)?\s*(?:option\s+)?\(?([A-Ja-j])(?:\)|\.|:|\s*\}|\s*$)", re.I)
_ANSWER_PHRASE = re.compile(
    r"(?i)\b(?:answer|(?:correct|right|best|final)\s+(?:option|choice|one)|my\s+choice)\s*"
    r"(?:is|would\s+be|should\s+be|must\s+be|:|=)?\s*:?\s*(?:\*\*)?\s*(?:option\s+|choice\s+|letter\s+)?" + _LETTER)
_CHOICE_PHRASE = re.compile(
    r"(?i)\b(?:I\s+(?:choose|pick|select)|I'll\s+(?:go\s+with|choose|pick|select)|I\s+will\s+(?:go\s+with|choose|"
    r"pick|select))\s+(?:option\s+|choice\s+)?" + _LETTER)
# "Option D is correct", "(C) is the correct answer", "B is the best choice"; a bare letter only where
# a sentence starts ("Vitamin C is the correct treatment" names no option).
_IS_CORRECT = re.compile(
    r"(?:(?i:option|choice)\s+|(?P<mark>\*\*|\()|(?<![^\n])|(?<=[.:;!?,] ))(?P<letter>[A-J])(?P<close>\)|\*\*)?\s+is\s+(?:the\s+)?"
    r"(?i:(?:correct|right|best)(?:\s+(?:answer|option|choice))?)\b(?!\s+(?:about|if|only|but))")
_OPTION_LINE = re.compile(r"^(?:\*\*)?(?i:option|choice)\s+\(?([A-Ja-j])\)?(?:\*\*)?[.!]?$")
_LISTED_OPTION = re.compile(r"^(?:\*\*)?\(?[A-J](?:\)|\.|:)(?:\*\*)?\s+\S")
_LINE_LETTER = re.compile(r"^(?:\*\*)?(\()?([A-Ja-j])(\)|\*\*|[.:])?(?:\*\*)?(?=\s|$)")
_BOLD_OPTION_LINE = re.compile(r"^\*\*\(?([A-J])[).:]\s+[^*]+\*\*[.!]?$")  # **C) Mitochondria**
# After an upper-case "A" (or "I"), these words keep it a letter ("A because..."),
# anything else lower case reads as the English word ("A bit...").
_AFTER_LETTER_WORDS = {"because", "since", "as", "and", "or", "is", "was", "which", "for", "given", "due",
                       "from", "with", "in", "here", "then", "so", "therefore", "fits"}
# A second letter joined to the first: "(B) or (C)", "B and D", "A/C", "A, B".
_SECOND_LETTER = re.compile(r"\s*(?:,|/|&|\bor\b|\band\b)\s*(?:option\s+)?(?:\*\*|\()?\s*([A-J])\b")
# Words that may stand between two statements without being reasoning ("The answer is B.\n\nFinal answer: \boxed{C}").
_LABEL_WORDS = re.compile(r"(?i)\b(?:the|final|correct|best|answer|answers|option|choice|is|so|therefore|thus|hence|"
                          r"in|conclusion|summary|my|boxed|text|textbf)\b")


class _Statement(tuple):
  """(start, end, letter or None when two letters are named)."""

  __slots__ = ()

  def __new__(cls, start: int, end: int, letter: str | None):
    return super().__new__(cls, (start, end, letter))


def _letter_of(match: re.Match, text: str) -> str | None:
  """The option letter a phrase match names, or None when it reads as an English word ("a", "A bit")."""
  letter = match.group("letter")
  if match.group("open") or match.group("close"):
    return letter.upper()
  after = text[match.end():match.end() + 16]
  ends = re.match(r"^\s*(?:[.,;:!?)]|$)", after)
  if letter in "ai" and not ends:
    return None  # "the answer is a tricky one": an article or a pronoun
  next_word = re.match(r"^\s?([a-z]+)", after)
  if letter in "AI" and next_word and next_word.group(1) not in _AFTER_LETTER_WORDS:
    return None  # "the answer is A bit unclear"
  return letter.upper()


def _statements(text: str) -> list[_Statement]:
  found = []
  for start, end, content in math_grading.all_boxed(text):
    match = _BOXED_LETTER.match(content)
    if match:
      found.append(_Statement(start, end, match.group(1).upper()))
  for pattern in (_ANSWER_PHRASE, _CHOICE_PHRASE):
    for match in pattern.finditer(text):
      letter = _letter_of(match, text)
      if letter is None:
        continue
      second = _SECOND_LETTER.match(text, match.end())
      if second and second.group(1) != letter:
        found.append(_Statement(match.start(), second.end(), None))  # "(B) or (C)": two answers
      else:
        found.append(_Statement(match.start(), match.end(), letter))
  for match in _IS_CORRECT.finditer(text):
    if match.group("mark") == "(" and match.group("close") != ")":
      continue
    found.append(_Statement(match.start(), match.end(), match.group("letter")))
  lines = [(m.start(), m.end(), m.group(0).strip()) for m in re.finditer(r"[^\n]+", text) if m.group(0).strip()]
  # A reply that lists the options ("A. Paris\nB. Berlin...") does not answer with its first line.
  lists_options = sum(bool(_LISTED_OPTION.match(line)) for _, _, line in lines) > 1
  for index, (start, end, line) in enumerate(lines[:1] + lines[-1:] if len(lines) > 1 else lines):
    is_first = index == 0 and start == lines[0][0]
    option = _OPTION_LINE.match(line) or _BOLD_OPTION_LINE.match(line)
    if option:
      found.append(_Statement(start, end, option.group(1).upper()))
      continue
    match = _LINE_LETTER.match(line)
    if not match:
      continue
    marked = bool(match.group(1) or match.group(3))  # "(b)", "b)", "**b**", "b."
    alone = len(line) == len(match.group(0))
    if not is_first and not alone:
      continue  # on the last line only a letter standing alone counts
    if is_first and not alone and lists_options:
      continue
    if marked or alone or match.group(2).isupper() and line[len(match.group(0)):].startswith(" -"):
      found.append(_Statement(start, start + len(match.group(0)), match.group(2).upper()))
  return sorted(found, key=lambda statement: (statement[0], statement[1]))


def _no_reasoning_between(text: str) -> bool:
  return not re.sub(r"[\W_]+", "", _LABEL_WORDS.sub("", text))


def extract_letter(text: str, num_choices: int = 4) -> str | None:
  """The option letter ``text`` gives as its answer, or None when it gives none or is ambiguous.

  Handles "The answer is (B)", "**Answer: C**", "Answer: B) ...", ``\\boxed{B}``,
  "I choose D", "Option D is correct", "Option D" or a letter alone on the last
  line, "B) ..." on the first line, lower case when clearly a letter, and a
  reply that discusses several options before it concludes (the last statement
  wins). It never guesses from letters mentioned in passing, never reads the
  article in "A good approach is..." as a letter, and gives None for a
  conclusion that names two letters ("(B) or (C)") or is contradicted by a
  statement right before it with no reasoning in between
  ("The answer is B.\n\n\\boxed{C}").
  """
  if not text:
    return None
  statements = _statements(text)
  if not statements:
    return None
  final = reached = statements[-1]
  for earlier in reversed(statements[:-1]):
    if earlier[1] > reached[0]:
      continue  # the same words read two ways ("Answer: B is correct")
    if not _no_reasoning_between(text[earlier[1]:reached[0]]):
      break  # reasoning came between: the later statement revises the earlier one
    if earlier[2] != final[2]:
      return None  # two different final letters
    reached = earlier
  letter = final[2]
  return letter if letter is not None and letter in LETTERS[:num_choices] else None


class MMLUReduxTask(base.Task):
  """MMLU-Redux with the eight roles of the paper."""

  name = "mmlu_redux"
  roles = MMLU_ROLES
  answer_instruction = MMLU_ANSWER_INSTRUCTION
  task_rules = MMLU_TASK_RULES
  synthesis_checklist = ("Check each analysis against the question and the options.",
                         "Find where the analyses disagree and which reasoning holds.",
                         "Determine which option the soundest reasoning supports.")
  decision_persona = MMLU_DECISION_PERSONA
  decision_instruction = MMLU_DECISION_INSTRUCTION

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
    # The format the prompts ask for: the letter alone on the first line, then a
    # short justification (which names the letter again, so the answer is still
    # found when a simulated reply puts reasoning before it).
    return f"{letter}\nOption {letter} is the best choice: it fits the question better than the other options."
