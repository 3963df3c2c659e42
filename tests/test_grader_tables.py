"""Tables of real-looking LLM replies with the verdict each grader must give (issue 14).

Each row is (reference answer, reply, verdict): long reasoning then a final
answer, tricky formats, and adversarial replies (digits that must not be joined,
a restatement of the question, two final letters). Grading is by value or not
at all: an expression is evaluated exactly or refused, never mangled.
"""

from __future__ import annotations

import time

import pytest

from hieramas_jax.tasks import base
from hieramas_jax.tasks import math_grading
from hieramas_jax.tasks.math import MathTask
from hieramas_jax.tasks.mmlu_redux import MMLUReduxTask, extract_letter
from hieramas_jax.tasks.synthetic import SyntheticTask

_LONG = ("Let me restate the problem to be sure I understand what is being asked. We are given the quantities in "
         "the statement and need a single exact result.\n\nStep 1: Set up the relationship between the given "
         "quantities.\nStep 2: Simplify carefully, keeping every factor exact.\nStep 3: Check the result against "
         "the original conditions.\n\n")

# ---------------------------------------------------------------------------- MATH
MATH_TABLE = [
    pytest.param("\\frac{3}{4}", _LONG + "Combining the fractions over a common denominator gives $\\frac{6}{8}$, "
                 "which reduces to $\\frac{3}{4}$.\n\n**Final Answer**\n\n$\\boxed{\\frac{3}{4}}$", True, id="boxed-frac"),
    pytest.param("\\frac{1}{2}", _LONG + "So the probability is $0.5$.\n\nThe final answer is $\\boxed{0.5}$.", True,
                 id="decimal-for-fraction"),
    pytest.param("100", _LONG + "There are 2 rows of 50 seats, so $\\boxed{2 \\cdot 50}$ seats.", True,
                 id="boxed-product-by-value"),
    pytest.param("250", _LONG + "Therefore the total is $\\boxed{2*50}$.", False, id="issue-2*50-is-not-250"),
    pytest.param("34", _LONG + "Hence the answer is $\\boxed{3 \\cdot 4}$.", False, id="issue-3cdot4-is-not-34"),
    pytest.param("12", _LONG + "Hence the answer is $\\boxed{3 \\cdot 4}$.", True, id="3cdot4-is-12"),
    pytest.param("34", _LONG + "Thus $\\boxed{3 4}$.", False, id="juxtaposed-digits-not-joined"),
    pytest.param("34", _LONG + "Thus $\\boxed{(3)(4)}$.", False, id="product-in-brackets-not-joined"),
    pytest.param("42", "We need the total number of apples. Ava has 17 and is given 25 more, so we add them. "
                 "The answer is 17 + 25.", False, id="issue-fallback-restatement"),
    pytest.param("42", "Ava has 17 and gets 25 more.\nThe answer is 17 + 25 = 42.", True,
                 id="fallback-chain-ending-in-value"),
    pytest.param("43", _LONG + "Adding up, the answer is 17 + 25 = 43.", False, id="self-contradicting-chain"),
    pytest.param("5", _LONG + "A first pass gives $\\boxed{4}$, but I dropped a carry. Redoing the sum carefully "
                 "gives $\\boxed{5}$.", True, id="last-box-wins"),
    pytest.param("4", _LONG + "A first pass gives $\\boxed{4}$, but I dropped a carry. Redoing the sum carefully "
                 "gives $\\boxed{5}$.", False, id="earlier-box-does-not-count"),
    pytest.param("\\frac{\\sqrt{3}}{2}", _LONG + "So $\\sin 60^\\circ = \\boxed{\\dfrac{\\sqrt{3}}{2}}$.", True,
                 id="nested-braces"),
    pytest.param("4", _LONG + "Solving the linear equation, $\\boxed{x = 4}$.", True, id="x-equals-value"),
    pytest.param("4", _LONG + "So we get $\\boxed{4.0}$.", True, id="trailing-zero-decimal"),
    pytest.param("4", _LONG + "So we get $\\boxed{\\text{4}}$.", True, id="text-wrapped-number"),
    pytest.param("4", _LONG + "So we get $\\boxed{{4}}$.", True, id="braced-number"),
    pytest.param("5", _LONG + "The ticket costs $\\boxed{\\$5}$.", True, id="dollar-sign"),
    pytest.param("\\$18.90", _LONG + "The bill comes to $\\boxed{18.90}$ dollars.", True, id="gold-with-dollar"),
    pytest.param("5", _LONG + "The rate is $\\boxed{5\\%}$.", True, id="percent-sign"),
    pytest.param("-3", _LONG + "The smaller root is $\\boxed{-3}$.", True, id="negative"),
    pytest.param("-3", _LONG + "The smaller root is $\\boxed{3}$.", False, id="sign-flip"),
    pytest.param("\\frac{1}{2}", "Half of the marbles are red, so the answer is 1/2.", True, id="fallback-slash-fraction"),
    pytest.param("1024", "We need $2^{10}$. The answer is $2^{10}$.", False, id="fallback-power-restates"),
    pytest.param("1024", _LONG + "This is $2^{10}$, i.e. $\\boxed{2^{10}}$.", True, id="boxed-power-by-value"),
    pytest.param("2\\sqrt{3}", _LONG + "The side length is therefore the answer is $2\\sqrt{3}$.", True,
                 id="fallback-symbolic-value"),
    pytest.param("\\frac{1}{3}", _LONG + "The probability is about $\\boxed{0.33}$.", False, id="rounded-decimal"),
    pytest.param("6\\frac{1}{4}", _LONG + "The recipe needs $\\boxed{\\frac{25}{4}}$ cups.", True,
                 id="gold-mixed-number"),
    pytest.param("\\frac{25}{4}", _LONG + "The recipe needs $\\boxed{6\\frac{1}{4}}$ cups.", True,
                 id="reply-mixed-number"),
    pytest.param("(1,2]", _LONG + "So $x \\in \\boxed{\\left(1, 2\\right]}$.", True, id="interval"),
    pytest.param("4", _LONG + "We arrive at $\\boxed{2x = 8}$.", False, id="unsolved-equation"),
    pytest.param("5x - 7y + 11z + 4 = 0", _LONG + "The plane is $\\boxed{5x - 7y + 11z + 4 = 0}$.", True,
                 id="equation-answer"),
    pytest.param("42", "Adding the two groups, the answer is 42, because 17 + 25 = 42.", True,
                 id="fallback-value-then-clause"),
    pytest.param("42", _LONG + "The final answer is **42**.", True, id="fallback-bold"),
    pytest.param("42", _LONG + "I was unable to finish the computation in the time available.", False,
                 id="no-answer"),
    pytest.param("12\\pi", _LONG + "The volume is $\\boxed{12\\pi \\approx 37.70}$ cubic units.", True,
                 id="exact-then-approximation"),
    pytest.param("12\\pi", _LONG + "The volume is $\\boxed{37.70}$ cubic units.", False, id="approximation-only"),
    pytest.param("\\text{Evelyn}", _LONG + "Evelyn has the greatest average speed: $\\boxed{\\text{Evelyn}}$.", True,
                 id="text-answer"),
    pytest.param("\\text{(C)}", _LONG + "Only graph C passes the vertical line test. $\\boxed{C}$", True,
                 id="letter-answer"),
    pytest.param("1000", _LONG + "So the total is $\\boxed{1,000}$.", True, id="thousands-separator"),
    pytest.param("30^\\circ", _LONG + "The angle is $\\boxed{30}$ degrees.", True, id="degrees"),
    pytest.param("7", "Final Answer: The final answer is $7$. I hope it is correct.", True, id="minerva-format"),
    pytest.param("-\\frac{1}{2}", _LONG + "Thus the slope is $\\boxed{\\frac{1}{2}}$.", False, id="missing-minus"),
    pytest.param("\\frac{\\pi}{2}", "The angle between them is a right angle, so the answer is $\\pi/2$.", True,
                 id="fallback-pi-fraction"),
    pytest.param("18", "There are 3 rows of 6. The answer is 3 \\times 6.", False, id="fallback-times-restates"),
]


@pytest.mark.parametrize("gold,reply,verdict", MATH_TABLE)
def test_math_table(gold, reply, verdict):
  problem = base.Problem(uid="table/math", question="(a MATH problem)", answer=gold)
  assert MathTask().grade(problem, reply) is verdict


# ---------------------------------------------------------------------------- synthetic
_SUM_QUESTION = "Ava has 17 marbles and is given 25 more. How many marbles does Ava have now?"
SYNTHETIC_TABLE = [
    pytest.param("100", _LONG + "Two boxes of fifty: $\\boxed{2*50}$.", True, id="issue-2*50-is-100"),
    pytest.param("250", _LONG + "Two boxes of fifty: $\\boxed{2*50}$.", False, id="issue-2*50-is-not-250"),
    pytest.param("34", _LONG + "So the count is $\\boxed{3 \\cdot 4}$.", False, id="issue-3cdot4-is-not-34"),
    pytest.param("12", _LONG + "So the count is $\\boxed{3 \\cdot 4}$.", True, id="3cdot4-is-12"),
    pytest.param("34", _LONG + "So the count is $\\boxed{3 \\times 4}$.", False, id="3times4-is-not-34"),
    pytest.param("34", _LONG + "So the count is $\\boxed{3 4}$.", False, id="juxtaposed-digits-refused"),
    pytest.param("42", "Ava starts with 17 marbles and receives 25 more, so we need the sum. The answer is 17 + 25.",
                 False, id="issue-fallback-restatement"),
    pytest.param("42", "Ava starts with 17 marbles and receives 25 more.\nThe answer is 17 + 25 = 42.", True,
                 id="fallback-chain-to-value"),
    pytest.param("42", "Adding the marbles together, the answer is 42.", True, id="fallback-value"),
    pytest.param("42", "So the answer is 42 marbles, since 17 + 25 = 42.", True, id="fallback-value-with-unit"),
    pytest.param("42", _LONG + "Adding gives $\\boxed{17 + 25 = 43}$.", False, id="contradicting-chain"),
    pytest.param("\\frac{1}{2}", _LONG + "The jug holds $\\boxed{\\frac{1}{2}}$ liter.", True, id="frac"),
    pytest.param("\\frac{1}{2}", _LONG + "The jug holds $\\boxed{0.5}$ liters.", True, id="decimal"),
    pytest.param("\\frac{1}{2}", _LONG + "The jug holds $\\boxed{1/2}$ liter.", True, id="slash"),
    pytest.param("\\frac{1}{2}", "Half a liter remains, so the answer is 1/2.", True, id="fallback-slash"),
    pytest.param("\\frac{1}{2}", _LONG + "The jug holds $\\boxed{0.49}$ liters.", False, id="near-decimal"),
    pytest.param("-3", _LONG + "Solving gives $\\boxed{-3}$.", True, id="negative"),
    pytest.param("-3", _LONG + "Solving gives $\\boxed{\u22123}$.", True, id="unicode-minus"),
    pytest.param("-3", _LONG + "Solving gives $\\boxed{(-3)}$.", True, id="negative-in-parentheses"),
    pytest.param("-3", _LONG + "Solving gives $\\boxed{3}$.", False, id="sign-flip"),
    pytest.param("5", _LONG + "It sells for $\\boxed{\\$5}$.", True, id="dollar"),
    pytest.param("5", _LONG + "The share is $\\boxed{5\\%}$.", True, id="percent"),
    pytest.param("5", _LONG + "Therefore $\\boxed{x = 5}$.", True, id="x-equals"),
    pytest.param("5", _LONG + "Therefore $\\boxed{5.0}$.", True, id="trailing-zero"),
    pytest.param("5", _LONG + "Therefore $\\boxed{\\text{5}}$.", True, id="text-number"),
    pytest.param("5", _LONG + "Therefore $\\boxed{{5}}$.", True, id="braced-number"),
    pytest.param("5", _LONG + "Therefore $\\boxed{5 \\text{ marbles}}$.", True, id="text-unit"),
    pytest.param("\\frac{9\\pi}{4}", _LONG + "The area is $\\boxed{\\frac{9}{4}\\pi}$.", True, id="pi-after-frac"),
    pytest.param("\\frac{9\\pi}{4}", _LONG + "The area is $\\boxed{2.25\\pi}$.", True, id="pi-decimal-coefficient"),
    pytest.param("\\frac{9\\pi}{4}", _LONG + "The area is $\\boxed{\\frac{9\\pi}{4} \\approx 7.07}$.", True,
                 id="exact-then-approximation"),
    pytest.param("\\frac{9\\pi}{4}", _LONG + "The area is $\\boxed{7.07}$.", False, id="approximation-only"),
    pytest.param("\\frac{9\\pi}{4}", _LONG + "The area is $\\boxed{\\frac{9}{4}}$.", False, id="pi-dropped"),
    pytest.param("12\\pi", _LONG + "The volume is $\\boxed{12\\pi \\text{ cm}^3}$.", True, id="pi-with-unit"),
    pytest.param("12\\pi", _LONG + "The volume is $\\boxed{\\pi \\cdot 12}$.", True, id="pi-times-number"),
    pytest.param("12\\pi", "The can holds the answer is $12\\pi$.", True, id="fallback-pi"),
    pytest.param("4", _LONG + "This leaves $\\boxed{2x = 8}$.", False, id="unsolved-equation"),
    pytest.param("8", _LONG + "This leaves $\\boxed{2x = 8}$.", False, id="unsolved-equation-rhs"),
    pytest.param("42", _LONG + "I first wrote $\\boxed{40}$ but forgot two marbles; corrected: $\\boxed{42}$.", True,
                 id="last-box-wins"),
    pytest.param("40", _LONG + "I first wrote $\\boxed{40}$ but forgot two marbles; corrected: $\\boxed{42}$.", False,
                 id="earlier-box-ignored"),
    pytest.param("\\frac{7}{2}", _LONG + "That is $\\boxed{3\\frac{1}{2}}$ liters.", True, id="mixed-number"),
    pytest.param("1000", _LONG + "So $\\boxed{1{,}000}$ stamps.", True, id="latex-thousands"),
    pytest.param("42", _LONG + "Numerically, $\\boxed{\\sqrt{1764}}$.", True, id="root-by-math-verify"),
    pytest.param("15", "Three rows of five chairs. The answer is 3 \\times 5.", False, id="fallback-times-restates"),
    pytest.param("15", "The answer is $15$ because $3 \\times 5 = 15$.", True, id="fallback-value-then-reason"),
    pytest.param("9", _LONG + "This is $\\boxed{3^2}$.", True, id="boxed-power"),
    pytest.param("9", "We square three. The answer is 3^2.", False, id="fallback-power-restates"),
    pytest.param("2", "I could not finish the computation.", False, id="simulator-no-answer"),
    pytest.param("1", _LONG + "So $\\boxed{1/0}$.", False, id="division-by-zero"),
    pytest.param("2", _LONG + "So $\\boxed{10^{10^{10}}}$.", False, id="power-tower"),
]


@pytest.mark.parametrize("gold,reply,verdict", SYNTHETIC_TABLE)
def test_synthetic_table(gold, reply, verdict):
  problem = base.Problem(uid="table/synthetic", question=_SUM_QUESTION, answer=gold, subject="arithmetic", level=1)
  assert SyntheticTask().grade(problem, reply) is verdict


def test_power_towers_are_refused_fast():
  start = time.perf_counter()
  for answer in ("9^{9^{9^{9}}}", "10^{10^{10}}", "2^{1000000}", "(" * 500 + "1" + ")" * 500):
    assert math_grading.read_value(answer).status != math_grading.VALUE
  assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------- MMLU
_ANALYSIS = ("Let's analyze each option in turn.\n\n(A) This confuses correlation with causation, so it does not "
             "follow from the passage.\n(B) This is consistent with the data in the second paragraph.\n(C) This "
             "overgeneralizes from a single case.\n(D) This contradicts the author's main claim.\n\n")
MMLU_TABLE = [
    pytest.param("B", _ANALYSIS + "The answer is (B)", True, id="answer-is-paren"),
    pytest.param("C", _ANALYSIS + "**Answer: C**", True, id="bold-answer-colon"),
    pytest.param("B", _ANALYSIS + "Answer: B) It is consistent with the data.", True, id="answer-letter-paren-text"),
    pytest.param("D", "Option A is tempting because it mentions inflation, and option C also looks plausible. "
                 "However, B ignores the time lag. After weighing them, the correct answer is **D. 42**.", True,
                 id="discusses-then-concludes"),
    pytest.param("C", _ANALYSIS + "the answer is (c).", True, id="lowercase-paren"),
    pytest.param("B", _ANALYSIS + "answer: b", True, id="lowercase-colon"),
    pytest.param("C", _ANALYSIS + "so the answer is c because the others fail", True, id="lowercase-bare"),
    pytest.param("D", _ANALYSIS + "Option D", True, id="option-line"),
    pytest.param("D", _ANALYSIS + "**Option D**", True, id="bold-option-line"),
    pytest.param("D", "A good approach is to eliminate options. B is too narrow, C is anachronistic. "
                 "The answer is D.", True, id="article-then-answer"),
    pytest.param("A", "A good approach is to eliminate options. B is too narrow, C is anachronistic. "
                 "The answer is D.", False, id="article-not-a-letter"),
    pytest.param("A", "A good approach here is to recall the definition of opportunity cost and apply it.", False,
                 id="article-no-conclusion"),
    pytest.param("B", _ANALYSIS + "The answer is (B) or (C).", False, id="two-letters-or"),
    pytest.param("C", _ANALYSIS + "The answer is (B) or (C).", False, id="two-letters-or-second"),
    pytest.param("B", _ANALYSIS + "The answer is B.\n\n\\boxed{C}", False, id="phrase-and-box-disagree"),
    pytest.param("B", _ANALYSIS + "**Final Answer: B**\n\nThe answer is (B)", True, id="repeated-same-letter"),
    pytest.param("C", "At first glance the answer is (A). However, re-reading the stem, (A) ignores the time limit "
                 "stated in the question, which rules it out. Therefore the answer is (C).", True, id="revision"),
    pytest.param("D", _ANALYSIS + "I choose D.", True, id="i-choose"),
    pytest.param("C", "Option C is correct because enzymes lower the activation energy.", True, id="option-is-correct"),
    pytest.param("B", _ANALYSIS + "(B) is the correct answer.", True, id="paren-is-correct-answer"),
    pytest.param("B", _ANALYSIS + "\\boxed{\\text{B}}", True, id="boxed-text-letter"),
    pytest.param("D", _ANALYSIS + "Final answer: \\boxed{D}", True, id="boxed-letter"),
    pytest.param("B", _ANALYSIS + "The correct option is b.", True, id="correct-option-lowercase"),
    pytest.param("D", _ANALYSIS + "I would choose (D) here", False, id="hedged-choice"),
    pytest.param("D", _ANALYSIS + "The answer is (E)", False, id="letter-out-of-range"),
    pytest.param("A", "The answer is A bit of a trick question, since every option has a flaw.", False,
                 id="answer-is-a-bit"),
    pytest.param("B", "B) Paris is the capital of France, not Germany; the question asks for France.", True,
                 id="first-line-letter-paren"),
    pytest.param("C", "C\n\nExplanation: the others fail because they confuse the two treaties.", True,
                 id="first-line-bare-letter"),
    pytest.param("D", _ANALYSIS + "D", True, id="last-line-bare-letter"),
    pytest.param("C", "Both A and C seem plausible, but A ignores inflation. The answer is C.", True,
                 id="two-mentioned-one-concluded"),
    pytest.param("B", _ANALYSIS + "The answer is B and D.", False, id="two-letters-and"),
    pytest.param("A", "Answer: A. The mitochondria is the site of oxidative phosphorylation.", True,
                 id="answer-letter-dot"),
    pytest.param("C", _ANALYSIS + "The answer is: **(C) Mitochondria**", True, id="bold-paren-letter-text"),
    pytest.param("C", _ANALYSIS + "**C) Mitochondria**", True, id="bold-option-text-line"),
    pytest.param("A", _ANALYSIS + "The answer is a) 42", True, id="lowercase-a-paren"),
    pytest.param("B", _ANALYSIS + "After careful thought, I'll go with option B.", True, id="ill-go-with"),
    pytest.param("B", "It cannot be A, and it cannot be C. So the answer must be... hmm, I'm not sure.", False,
                 id="no-conclusion"),
    pytest.param("D", "Final answer: (A)\n\nWait, actually (A) confuses the treaty of 1648 with the one of 1713, "
                 "which changes everything.\n\nFinal answer: (D)", True, id="revised-final-answer"),
    pytest.param("B", _ANALYSIS + "Answer: (B)\nAnswer: (C)", False, id="two-final-answers"),
    pytest.param("C", _ANALYSIS + "The best answer is C.", True, id="best-answer"),
    pytest.param("A", _ANALYSIS + "Therefore, the correct choice is (a).", True, id="correct-choice-lowercase-a"),
    pytest.param("A", "A is wrong, B is wrong", False, id="evaluations-only"),
    pytest.param("C", "Let's consider (A) first. Then (B). The answer is (C)", True, id="mentions-then-answer"),
    pytest.param("D", _ANALYSIS + "My choice is D.", True, id="my-choice"),
    pytest.param("B", _ANALYSIS + "**Answer:** B", True, id="bold-label-then-letter"),
    pytest.param("D", _ANALYSIS + "Answer: D\n\nI am fairly confident in this.", True, id="answer-then-remark"),
    pytest.param("B", "", False, id="empty"),
    pytest.param("A", "A. Paris\nB. Berlin\nC. Rome\nD. Madrid\n\nBerlin is the capital of Germany.", False,
                 id="options-echoed-not-an-answer"),
    pytest.param("C", _ANALYSIS + "Answer: $\\text{C}$", True, id="latex-text-letter"),
    pytest.param("B", _ANALYSIS + "The correct answer is C, not B.", False, id="not-b"),
    pytest.param("C", _ANALYSIS + "The correct answer is C, not B.", True, id="c-not-b"),
    pytest.param("B", _ANALYSIS + "\\boxed{Berlin}", False, id="boxed-word-starting-with-letter"),
    pytest.param("C", "The patient's bleeding gums point to scurvy, and vitamin C is the correct treatment.", False,
                 id="vitamin-c-is-no-option"),
    pytest.param("C", _ANALYSIS + "Checking each one: A is incorrect. B is incorrect. C is correct. D is incorrect.",
                 True, id="option-by-option-verdicts"),
]


@pytest.mark.parametrize("gold,reply,verdict", MMLU_TABLE)
def test_mmlu_table(gold, reply, verdict):
  problem = base.Problem(uid="table/mmlu", question="(a question)", answer=gold,
                         meta={"choices": ["first", "second", "third", "fourth"]})
  assert MMLUReduxTask().grade(problem, reply) is verdict


def test_tables_are_large_and_balanced():
  for table in (MATH_TABLE, SYNTHETIC_TABLE, MMLU_TABLE):
    verdicts = [case.values[2] for case in table]
    assert len(table) >= 40 and 10 <= sum(verdicts) <= len(table) - 10


def test_mmlu_ambiguous_reply_names_no_letter():
  assert extract_letter(_ANALYSIS + "The answer is (B) or (C).") is None
  assert extract_letter(_ANALYSIS + "The answer is B.\n\n\\boxed{C}") is None
