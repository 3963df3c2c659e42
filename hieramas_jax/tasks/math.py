"""MATH (competition mathematics): MATH-500 and the 5000-problem MATH test.

Data, in their public JSONL formats: ``math/math500_test.jsonl`` (problem,
solution, answer, subject, level as an int, unique_id) and ``math/math_test.jsonl``
(problem, level as "Level 3", type, solution, idx; the answer is the last
``\\boxed{}`` of the solution). Any JSONL file of either form loads with
``path=``; Hugging Face ``datasets`` is used only when asked (``source='hf'``).

Splits: ``test`` / ``math500`` (MATH-500), ``math_test`` (all 5000), ``train``
(the 4500 problems of the MATH test that are not in MATH-500, as PRM800K used
them; with ``source='hf'``: the 7500-problem MATH training set).
"""

from __future__ import annotations

import pathlib
import random
import re
from typing import Any, Iterable, Mapping

from hieramas_jax import paths
from hieramas_jax.tasks import base
from hieramas_jax.tasks import math_grading
from hieramas_jax.tasks import records

# The paper's three MATH roles and what each synthesizer checks, in our words.
MATH_ROLES = (
    base.RoleSpec(
        "Mathematical Analyst",
        "You model the problem before computing: give every unknown and every given quantity a letter, write the "
        "relations between them step by step, then substitute the given values into that model and compute.",
        synthesis_checklist=(
            "Check that each analysis models the problem correctly with its variables.",
            "Verify the substitution of the values and each computation.",
            "Where the analyses differ, decide which model of the problem is right.")),
    base.RoleSpec(
        "Math Solver",
        "You solve the problem step by step, using your teammates' hints where they help, and show every step "
        "of your work.",
        synthesis_checklist=(
            "Check every step of each solution for mathematical errors.",
            "Find the solution whose reasoning is most reliable.",
            "Where the solutions reach different results, decide which one is correct and explain why.")),
    base.RoleSpec(
        "Inspector",
        "You check the team's work: test the logic and every calculation of your teammates' analyses and "
        "solutions (and any code they wrote) for errors, then solve the problem step by step yourself.",
        synthesis_checklist=(
            "Weigh what each inspector found right or wrong in the team's work.",
            "Combine their checks into one verdict.",
            "Settle on the result that holds up best.")),
)
# The paper's format: the last line states the result alone, with no units (no \boxed{}).
MATH_ANSWER_INSTRUCTION = ("The last line of your reply must be \"The answer is N\", where N is the final result "
                           "alone: exact and simplified, LaTeX where needed (for example \\frac{3}{4} or "
                           "2\\sqrt{5}), with no units and nothing after it.")
MATH_TASK_RULES = ("Never write drawing code (Asymptote, TikZ, PSTricks or the like): reason with mathematics and "
                   "calculation only.")
MATH_DECISION_PERSONA = ("You are the top decision-maker of a team of mathematicians, good at analysing math "
                         "problems, judging other people's solutions, and giving the final result.")
MATH_DECISION_INSTRUCTION = ("Analyse the team's work step by step: find where their outputs disagree and why, "
                             "decide which reasoning is right, and give the reasons for your decision.")

# A worked example shown to the decision node once (the paper's code shows one
# too): the roles disagree about what a percentage is taken of, and the decision
# names the error of each wrong reading before it picks the right one.
MATH_DECISION_EXAMPLE_QUESTION = (
    "A bookshop sells a novel for 18 dollars after taking 25% off its original price. In a later sale the shop "
    "takes 40% off the original price instead. How many dollars does the novel cost in the later sale?")
MATH_DECISION_EXAMPLE_OUTPUTS = (
    ("Mathematical Analyst",
     "Let p be the original price. The first sale gives p(1 - 0.25) = 18, so p = 24. The later sale charges "
     "0.6p = 0.6 * 24 = 14.4.\nThe answer is 14.4"),
    ("Math Solver",
     "25% off means the original price is 25% more than the sale price: 18 * 1.25 = 22.5. Taking 40% off "
     "gives 22.5 * 0.6 = 13.5.\nThe answer is 13.5"),
    ("Inspector",
     "The later sale takes 40% off, so the price is 18 * (1 - 0.4) = 10.8.\nThe answer is 10.8"),
)
MATH_DECISION_EXAMPLE_REPLY = (
    "The three roles disagree about what each discount is taken of, so I check that first.\n"
    "The Math Solver adds 25% to the sale price. But the 25% is taken off the original price, so the sale price "
    "is 75% of the original: the original is 18 / 0.75 = 24, not 22.5.\n"
    "The Inspector takes 40% off the sale price of 18, but the problem says the later discount is taken off the "
    "original price.\n"
    "The Mathematical Analyst takes both discounts off the original price: 0.75p = 18 gives p = 24, and the "
    "later price is 0.6 * 24 = 14.4. Check: 24 * 0.75 = 18 matches the given price. This reading follows the "
    "problem, so I take it.\n"
    "The answer is 14.4")

_FILES = {"math500": "math/math500_test.jsonl", "math_test": "math/math_test.jsonl"}
_HF_SOURCES = {  # split -> (dataset, config names or None, dataset split)
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "math_test": ("EleutherAI/hendrycks_math", ("algebra", "counting_and_probability", "geometry",
                                                "intermediate_algebra", "number_theory", "prealgebra",
                                                "precalculus"), "test"),
}
_HF_SOURCES["train"] = (_HF_SOURCES["math_test"][0], _HF_SOURCES["math_test"][1], "train")


def parse_level(value: Any) -> int:
  """1..5 from 5, "5" or "Level 5"; 0 when unknown."""
  match = re.search(r"\d+", str(value))
  level = int(match.group(0)) if match else 0
  return level if 1 <= level <= 5 else 0


def problem_from_record(record: Mapping[str, Any], uid: str) -> base.Problem:
  """A Problem from one record of MATH-500 or MATH format."""
  solution = record.get("solution", "") or ""
  answer = record.get("answer")
  if answer is None or str(answer).strip() == "":
    answer = math_grading.last_boxed(solution)
  if answer is None:
    raise ValueError(f"MATH record {uid} has neither an answer field nor a \\boxed{{}} answer in its solution")
  subject = record.get("subject") or record.get("type") or ""
  return base.Problem(uid=uid, question=record["problem"], answer=str(answer).strip(), subject=str(subject),
                      level=parse_level(record.get("level", 0)), meta={"solution": solution})


def _records_from_jsonl(path: pathlib.Path) -> Iterable[tuple[int, dict[str, Any]]]:
  """(0-based line index, record) of each non-blank line; ValueError naming the file and line of a bad one."""

  def not_a_record(record: Any) -> str | None:
    if isinstance(record, dict) and isinstance(record.get("problem"), str):
      return None
    return "a MATH record (a JSON object with a 'problem' text)"

  return ((line_number - 1, record) for line_number, record in records.jsonl_records(path, not_a_record))


def _uid(record: Mapping[str, Any], prefix: str, index: int) -> str:
  if record.get("unique_id"):
    return str(record["unique_id"])
  if record.get("idx") is not None:
    return f"{prefix}/{record['idx']}"
  return f"{prefix}/{index}"


class MathTask(base.Task):
  """MATH with the roles of the paper: Mathematical Analyst, Math Solver, Inspector."""

  name = "math"
  roles = MATH_ROLES
  answer_instruction = MATH_ANSWER_INSTRUCTION
  task_rules = MATH_TASK_RULES
  decision_persona = MATH_DECISION_PERSONA
  decision_instruction = MATH_DECISION_INSTRUCTION

  def __init__(self, timeout_s: int = 5):
    self.timeout_s = timeout_s  # math-verify's per-call limit (main thread only)

  # ---- data
  def load(self, split: str = "test", path: str | pathlib.Path | None = None, limit: int | None = None,
           source: str = "local", subjects: Iterable[str] | None = None,
           levels: Iterable[int] | None = None) -> list[base.Problem]:
    """Problems of ``split`` (see the module doc), or of any JSONL file ``path``.

    Args:
      split: 'test' (= 'math500'), 'math500', 'math_test' or 'train'.
      path: a JSONL file in MATH-500 or MATH format (overrides split's file).
      limit: keep the first ``limit`` problems (after filtering).
      source: 'local' (files under the data folder) or 'hf' (Hugging Face datasets).
      subjects, levels: keep only these subjects / levels.
    """
    split = "math500" if split == "test" else split
    if path is not None:
      path = pathlib.Path(path)
      problems = [problem_from_record(r, _uid(r, f"math/{path.stem}", i)) for i, r in _records_from_jsonl(path)]
    elif source == "hf":
      problems = self._load_hf(split)
    elif source != "local":
      raise ValueError(f"unknown source {source!r}; use 'local' or 'hf'")
    elif split in _FILES:
      problems = self._load_file(split)
    elif split == "train":
      held_out = {p.question.strip() for p in self._load_file("math500")}
      problems = [p for p in self._load_file("math_test") if p.question.strip() not in held_out]
    else:
      raise ValueError(f"unknown MATH split {split!r}; use 'test', 'math500', 'math_test' or 'train'")
    if subjects is not None:
      wanted = {s.lower() for s in subjects}
      problems = [p for p in problems if p.subject.lower() in wanted]
    if levels is not None:
      wanted_levels = set(levels)
      problems = [p for p in problems if p.level in wanted_levels]
    return problems[:limit] if limit is not None else problems

  def _load_file(self, split: str) -> list[base.Problem]:
    path = paths.require_data_file(_FILES[split])
    return [problem_from_record(r, _uid(r, f"math/{split}", i)) for i, r in _records_from_jsonl(path)]

  def _load_hf(self, split: str) -> list[base.Problem]:
    if split not in _HF_SOURCES:
      raise ValueError(f"split {split!r} has no Hugging Face source; use one of {', '.join(_HF_SOURCES)}")
    try:
      import datasets  # optional; only for users with network access
    except ImportError as e:
      raise ImportError("source='hf' needs the `datasets` package (pip install datasets) and network "
                        "access; or use the local JSONL files / path=") from e
    name, configs, hf_split = _HF_SOURCES[split]
    problems = []
    for config in configs or (None,):
      rows = datasets.load_dataset(name, config, split=hf_split) if config else datasets.load_dataset(
          name, split=hf_split)
      for i, row in enumerate(rows):
        prefix = f"math/hf/{hf_split}/{config}" if config else f"math/hf/{split}"
        problems.append(problem_from_record(row, _uid(row, prefix, i)))
    return problems

  # ---- answers
  def extract(self, text: str) -> str | None:
    return math_grading.extract_answer(text)

  def grade(self, problem: base.Problem, text: str) -> bool:
    found = math_grading.extract_answer_with_source(text)
    # None: no answer, or one refused ("the answer is 17 + 25"); equivalent grades None wrong.
    stated = math_grading.graded_answer(*found) if found else None
    return math_grading.equivalent(problem.answer, stated, timeout_s=self.timeout_s)

  def decision_example(self) -> list[base.Message]:
    return math_decision_example(self)

  def render_answer(self, problem: base.Problem, correct: bool, rng: random.Random) -> str:
    if correct:
      return answer_line_text(problem.answer)
    for wrong in math_grading.perturb(problem.answer, rng):
      text = answer_line_text(wrong)
      if not self.grade(problem, text):
        return text
    return "I could not reach a final result."  # no extractable answer: graded wrong


def answer_line_text(answer: str) -> str:
  """A short reply in the format the MATH prompts ask for: the last line is "The answer is N"."""
  one_line = " ".join(answer.split())  # an answer that spans lines must still sit on the last line
  return f"Working through the problem step by step gives the result.\nThe answer is {one_line}"


def math_decision_example(task: base.Task) -> list[base.Message]:
  """The decision node's worked example, laid out as ``task`` lays out a real decision prompt."""
  return [{"role": "user", "content": task.decision_user_prompt(MATH_DECISION_EXAMPLE_QUESTION,
                                                                MATH_DECISION_EXAMPLE_OUTPUTS)},
          {"role": "assistant", "content": MATH_DECISION_EXAMPLE_REPLY}]
