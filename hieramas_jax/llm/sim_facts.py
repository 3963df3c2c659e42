"""Published single-call scores of the paper's pool: what the anchored simulated world is set from.

Each :class:`Fact` is one (model, benchmark) accuracy in percent with the
document it comes from. ``measured_on`` says which benchmark the figure is
really for when it is not exactly ours (full MATH for MATH-500, MMLU for
MMLU-Redux, HumanEval-Mul for HumanEval). Where no figure exists for the model,
``derived`` says so and from which nearest published figure the value was
taken; ``source`` then names that figure's document. Nothing here is tuned: the
anchored world is calibrated so that each model's single-call accuracy over the
task's subject/level mix equals ``score``.

Choice of figure, in order: the model maker's own figure on the exact benchmark;
the Qwen3 report's measurement of the model on the exact benchmark (one harness
for several pool models); the maker's figure on the nearest benchmark (MATH is
IID with MATH-500, per openai/simple-evals note 6); a derived value.

Documents cited:
  simple-evals: github.com/openai/simple-evals README, "Benchmark Results" table.
  Qwen3 report: Qwen3 Technical Report, arXiv 2505.09388, Tables 12-18.
  Qwen2.5 blog: qwenlm.github.io/blog/qwen2.5-llm (instruct-model tables, as quoted verbatim in public notes).
  Llama card: github.com/meta-llama/llama-models models/llama3_1/MODEL_CARD.md.
  DeepSeek-V3 README: github.com/deepseek-ai/DeepSeek-V3, chat-model table.
  Gemma 3 report: arXiv 2503.19786, instruction-tuned model table.
  Qwen3-Next card: huggingface.co/Qwen/Qwen3-Next-80B-A3B-Instruct, performance table.
  GPT-5 system card: openai.com/index/gpt-5-system-card, table 1 (model successors).
"""

from __future__ import annotations

import dataclasses

BENCHMARKS = ("math", "mmlu_redux", "humaneval")

# Which benchmark's figures a task is anchored to (the synthetic and arithmetic
# tasks stand in for MATH).
TASK_BENCHMARK = {
    "math": "math",
    "synthetic": "math",
    "arithmetic": "math",
    "mmlu_redux": "mmlu_redux",
    "humaneval": "humaneval",
    "humaneval_plus": "humaneval",
}


@dataclasses.dataclass(frozen=True)
class Fact:
  """One published (or derived) single-call accuracy.

  Attributes:
    model: the pool name.
    benchmark: one of BENCHMARKS.
    score: accuracy in percent.
    measured_on: the benchmark (and setting) the figure is for.
    source: the document and table it is read from.
    derived: empty when published for this model; otherwise how it was derived.
  """

  model: str
  benchmark: str
  score: float
  measured_on: str
  source: str
  derived: str = ""


FACTS: tuple[Fact, ...] = (
    # GPT-4o-mini (gpt-4o-mini-2024-07-18).
    Fact("GPT-4o-mini", "math", 70.2, "MATH (0-shot CoT)", "simple-evals table, OpenAI launch figure"),
    Fact("GPT-4o-mini", "mmlu_redux", 81.5, "MMLU-Redux", "Qwen3 report, Table 14 (OpenAI's own MMLU: 82.0)"),
    Fact("GPT-4o-mini", "humaneval", 87.2, "HumanEval", "simple-evals table, OpenAI launch figure"),
    # Llama-3.1-8B-Instruct.
    Fact("Llama-3.1-8B", "math", 51.9, "MATH (0-shot CoT)", "Llama card (also simple-evals table)"),
    Fact("Llama-3.1-8B", "mmlu_redux", 61.7, "MMLU-Redux",
         "Qwen3 report, Table 18 (Meta's MMLU 5-shot: 69.4; the Qwen2.5 blog measured MMLU-Redux 67.2)"),
    Fact("Llama-3.1-8B", "humaneval", 72.6, "HumanEval (0-shot)", "Llama card (also simple-evals table)"),
    # DeepSeek-V3.2: no figure on these benchmarks; its predecessor DeepSeek-V3's.
    Fact("DeepSeek-V3.2", "math", 90.2, "MATH-500 (DeepSeek-V3)", "DeepSeek-V3 README",
         derived="no MATH-500 figure for V3.2; DeepSeek-V3's taken as the nearest published one"),
    Fact("DeepSeek-V3.2", "mmlu_redux", 89.1, "MMLU-Redux (DeepSeek-V3)", "DeepSeek-V3 README",
         derived="no MMLU-Redux figure for V3.2; DeepSeek-V3's taken as the nearest published one"),
    Fact("DeepSeek-V3.2", "humaneval", 82.6, "HumanEval-Mul (DeepSeek-V3)", "DeepSeek-V3 README",
         derived="no HumanEval figure for V3.2; DeepSeek-V3's multilingual HumanEval-Mul is the nearest"),
    # Gemma-3-27B-IT.
    Fact("Gemma-3-27B", "math", 89.0, "MATH", "Gemma 3 report (Qwen3 report Table 16 measured MATH-500 90.0)"),
    Fact("Gemma-3-27B", "mmlu_redux", 82.6, "MMLU-Redux", "Qwen3 report, Table 16"),
    Fact("Gemma-3-27B", "humaneval", 87.8, "HumanEval", "Gemma 3 report"),
    # Qwen3-8B, non-thinking mode (the pool's calls do not think).
    Fact("Qwen3-8B", "math", 87.4, "MATH-500 (non-thinking)", "Qwen3 report, Table 18"),
    Fact("Qwen3-8B", "mmlu_redux", 79.5, "MMLU-Redux (non-thinking)", "Qwen3 report, Table 18"),
    Fact("Qwen3-8B", "humaneval", 84.8, "HumanEval (Qwen2.5-7B-Instruct)", "Qwen2.5 blog",
         derived="no HumanEval figure for the post-trained Qwen3-8B; its same-size predecessor "
                 "Qwen2.5-7B-Instruct's (which Qwen3-8B non-thinking matches or beats on every Table 18 row)"),
    # Qwen3-Next-80B-A3B-Instruct.
    Fact("Qwen3-Next-80B-A3B", "math", 91.2, "MATH-500 (Qwen3-235B-A22B non-thinking)", "Qwen3 report, Table 12",
         derived="no MATH-500 figure for Qwen3-Next; the card compares it with the Qwen3-235B-A22B instruct "
                 "models, so the original Qwen3-235B-A22B non-thinking figure is taken (a lower bound)"),
    Fact("Qwen3-Next-80B-A3B", "mmlu_redux", 90.9, "MMLU-Redux",
         "Qwen3-Next card (read through secondary copies of the card; MMLU-Pro 80.6 on the same card)"),
    Fact("Qwen3-Next-80B-A3B", "humaneval", 82.6, "HumanEval-Mul (DeepSeek-V3)", "DeepSeek-V3 README",
         derived="no HumanEval figure for Qwen3-Next; the pool model nearest to it on both MMLU-Redux "
                 "(89.1 vs 90.9) and MATH-500 (90.2 vs 91.2), DeepSeek-V3, gives its figure"),
    # GPT-5-mini: the GPT-5 system card names o4-mini as its predecessor; OpenAI
    # published no MATH/MMLU/HumanEval figure for GPT-5-mini itself.
    Fact("GPT-5-mini", "math", 97.5, "MATH-500 (o4-mini, medium)", "simple-evals table",
         derived="no figure for GPT-5-mini; its predecessor o4-mini's (GPT-5 system card, table 1)"),
    Fact("GPT-5-mini", "mmlu_redux", 90.0, "MMLU (o4-mini, medium)", "simple-evals table",
         derived="no MMLU-Redux figure for GPT-5-mini; o4-mini's MMLU (GPT-5 system card, table 1)"),
    Fact("GPT-5-mini", "humaneval", 97.3, "HumanEval (o4-mini, medium)", "simple-evals table",
         derived="no figure for GPT-5-mini; its predecessor o4-mini's (GPT-5 system card, table 1)"),
    # GPT-5-nano: the system card names GPT-4.1-nano as its predecessor, but that
    # model does not reason (MATH 62.3) while GPT-5-nano is a reasoning model; the
    # weakest published OpenAI reasoning model, o3-mini (low), is taken instead.
    Fact("GPT-5-nano", "math", 95.8, "MATH-500 (o3-mini, low)", "simple-evals table",
         derived="no figure for GPT-5-nano; o3-mini (low), the weakest OpenAI reasoning model with "
                 "published figures (GPT-4.1-nano, its named predecessor, does not reason)"),
    Fact("GPT-5-nano", "mmlu_redux", 84.9, "MMLU (o3-mini, low)", "simple-evals table",
         derived="no figure for GPT-5-nano; o3-mini (low)'s MMLU, as for MATH"),
    Fact("GPT-5-nano", "humaneval", 94.5, "HumanEval (o3-mini, low)", "simple-evals table",
         derived="no figure for GPT-5-nano; o3-mini (low)'s, as for MATH"),
)


def fact(model: str, benchmark: str) -> Fact:
  """The fact for (model, benchmark); KeyError says which models have figures."""
  for f in FACTS:
    if f.model == model and f.benchmark == benchmark:
      return f
  known = sorted({f.model for f in FACTS if f.benchmark == benchmark})
  raise KeyError(f"no published {benchmark!r} figure for model {model!r}; the facts table has {known}. "
                 "Add a Fact (with its source) to hieramas_jax/llm/sim_facts.py or use the invented world")


def benchmark_of(task_name: str) -> str:
  """The benchmark whose figures anchor a task."""
  if task_name in BENCHMARKS:
    return task_name
  if task_name not in TASK_BENCHMARK:
    raise KeyError(f"no benchmark anchors task {task_name!r}; known tasks: {sorted(TASK_BENCHMARK)}; pass "
                   f"benchmark= one of {BENCHMARKS}")
  return TASK_BENCHMARK[task_name]


# The (subject, level) mix of each benchmark's test set, used to calibrate when
# the run's own problems are not given. MATH-500: counts of
# HuggingFaceH4/MATH-500 (the prm800k split), as loaded by tasks.math.
MATH500_MIX: dict[tuple[str, int], int] = {
    ("Algebra", 1): 17, ("Algebra", 2): 21, ("Algebra", 3): 26, ("Algebra", 4): 30, ("Algebra", 5): 30,
    ("Counting & Probability", 1): 2, ("Counting & Probability", 2): 7, ("Counting & Probability", 3): 4,
    ("Counting & Probability", 4): 13, ("Counting & Probability", 5): 12,
    ("Geometry", 1): 2, ("Geometry", 2): 8, ("Geometry", 3): 8, ("Geometry", 4): 10, ("Geometry", 5): 13,
    ("Intermediate Algebra", 1): 7, ("Intermediate Algebra", 2): 12, ("Intermediate Algebra", 3): 19,
    ("Intermediate Algebra", 4): 23, ("Intermediate Algebra", 5): 36,
    ("Number Theory", 1): 5, ("Number Theory", 2): 10, ("Number Theory", 3): 16, ("Number Theory", 4): 19,
    ("Number Theory", 5): 12,
    ("Prealgebra", 1): 7, ("Prealgebra", 2): 19, ("Prealgebra", 3): 17, ("Prealgebra", 4): 20,
    ("Prealgebra", 5): 19,
    ("Precalculus", 1): 3, ("Precalculus", 2): 13, ("Precalculus", 3): 15, ("Precalculus", 4): 13,
    ("Precalculus", 5): 12,
}

# MMLU-Redux: 57 subjects of 100 questions, no levels (level 0).
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)

BENCHMARK_MIX: dict[str, dict[tuple[str, int], int]] = {
    "math": MATH500_MIX,
    "mmlu_redux": {(s, 0): 100 for s in MMLU_SUBJECTS},
    "humaneval": {("code", 0): 164},
}
