"""MMLU-Redux: the quirks of the CSVs, the row counts, and letter extraction."""

from __future__ import annotations

import random

import pytest

from hieramas_jax.tasks import get_task
from hieramas_jax.tasks.mmlu_redux import MMLUReduxTask, extract_letter, normalize_error_type


@pytest.mark.parametrize("text,expected", [
    ("The answer is (B)", "B"),
    ("Analysis...\n\nThe answer is **(B)**", "B"),
    ("the answer is (c).", "C"),
    ("The answer is B", "B"),
    ("the answer is b", "B"),
    ("The correct answer is D.", "D"),
    ("**Answer: C**", "C"),
    ("Answer: **D**", "D"),
    ("answer is: (d)", "D"),
    ("Answer: A) True", "A"),
    ("the correct option is b.", "B"),
    ("I think the answer is A because it fits", "A"),
    ("\\boxed{B}", "B"),
    ("\\boxed{\\text{D}}", "D"),
    ("Final: \\boxed{(a)}", "A"),
    ("B) Paris is the capital", "B"),
    ("a) yes", "A"),
    ("(b) since the rest are wrong", "B"),
    ("**B**", "B"),
    ("C\nbecause the others fail", "C"),
    ("c", "C"),
    ("b.", "B"),
    ("Reasoning here.\nD", "D"),
    ("Reasoning.\n\n**C**", "C"),
    ("Let's consider (A) first. Then (B). The answer is (C)", "C"),
    # No answer rather than a guess:
    ("The answer is a tricky one", None),
    ("The answer is A bit unclear to me", None),
    ("Option (A) and option (B) are both plausible", None),
    ("A is wrong, B is wrong", None),
    ("A lot of thought.\nFinally (C) is wrong", None),
    ("I would choose (D) here", None),
    ("I'm not sure.", None),
    ("", None),
    ("E", None),
    ("The answer is (E)", None),
])
def test_extract_letter(text, expected):
  assert extract_letter(text) == expected


def test_more_choices_widen_the_letters():
  assert extract_letter("The answer is (E)", num_choices=5) == "E"


def _write(path, text, encoding="utf-8"):
  path.write_bytes(text.encode(encoding))


def test_csv_quirks_delimiters_column_order_encoding(tmp_path):
  _write(tmp_path / "mmlu_alpha.csv",
         'question,choices,answer,error_type,source,correct_answer,potential_reason\n'
         '"Q1, with a comma?","[\'w\', \'x\', \'y\', \'z\']",2,ok,src,,\n'
         'Q2?,"[\'a\', \'b\', \'c\', \'d\']",0,Wrong Groundtruth,src,1,why\n')
  _write(tmp_path / "mmlu_beta.csv",
         'question;choices;answer;error_type;source;correct_answer;potential_reason\n'
         'Q3?;"[\'one\', \'two; three\', \'four\', \'five\']";3;OK ;s;;\n')
  _write(tmp_path / "mmlu_gamma.csv",
         'question,choices,answer,correct_answer,error_type,source,potential_reason\n'
         '"Caf\u00e9 \u2019quoted\u2019?","[\'\u00e9\', \'b\', \'c\', \'d\']",1,,Ok,s,\n', encoding="cp1252")
  task = MMLUReduxTask()
  problems = task.load(path=tmp_path)
  assert [p.uid for p in problems] == ["mmlu_redux/alpha/0", "mmlu_redux/alpha/1", "mmlu_redux/beta/0",
                                       "mmlu_redux/gamma/0"]
  assert [p.answer for p in problems] == ["C", "A", "D", "B"]
  assert problems[0].question == "Q1, with a comma?\n\n(A) w\n(B) x\n(C) y\n(D) z"
  assert problems[2].meta["choices"][1] == "two; three"
  assert "\u2019" in problems[3].question and problems[3].meta["choices"][0] == "\u00e9"
  assert [p.meta["error_type"] for p in problems] == ["ok", "wrong groundtruth", "ok", "ok"]
  assert len(task.load(path=tmp_path, only_ok=True)) == 3
  assert len(task.load(path=tmp_path / "mmlu_beta.csv")) == 1
  assert len(task.load(path=tmp_path, subjects=["gamma"])) == 1
  assert all(p.level == 0 for p in problems)


def test_error_type_spellings():
  assert normalize_error_type("OK ") == "ok"
  assert normalize_error_type("Wrong_groundtruth ") == "wrong groundtruth"
  assert normalize_error_type("bad_question_clarity") == normalize_error_type("Bad Question Clarity")


def test_missing_data_and_bad_split(monkeypatch, tmp_path):
  monkeypatch.setenv("HIERAMAS_DATA", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="HIERAMAS_DATA"):
    MMLUReduxTask().load()
  with pytest.raises(ValueError, match="split_problems"):
    MMLUReduxTask().load("train")


def test_all_files_load_to_5700_rows_5330_ok(shared_data):
  task = get_task("mmlu_redux")
  problems = task.load()
  assert len(problems) == 5700 and len({p.uid for p in problems}) == 5700
  subjects = {p.subject for p in problems}
  assert len(subjects) == 57 and "moral_scenarios" in subjects
  assert all(sum(p.subject == s for p in problems) == 100 for s in ("anatomy", "moral_scenarios"))
  assert len(task.load(only_ok=True)) == 5330
  assert {p.answer for p in problems} == set("ABCD")
  assert all(len(p.meta["choices"]) == 4 for p in problems)


def test_rendered_answers_grade_as_intended(shared_data):
  task = get_task("mmlu_redux")
  rng = random.Random(0)
  problems = task.load()[::7]
  assert all(task.grade(p, task.render_answer(p, True, rng)) for p in problems)
  assert not any(task.grade(p, task.render_answer(p, False, rng)) for p in problems)
