"""The report (table, front, files), the evaluation's rows from the method registry, and launch.evaluate end to
end on a smoke-trained run (including a toy method added through the registry)."""

import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hieramas_jax import baselines, evaluation, report, train
from hieramas_jax import config as base_config
from hieramas_jax.results import CallRecord, QueryResult
from hieramas_jax.llm.sim_task import ArithmeticTask
from hieramas_jax.train import environment

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASK = ArithmeticTask()


def _row(method, accuracy, cost):
  gradable = not math.isnan(accuracy)
  return report.MethodRow(method=method, setup="", queries=10, failed=0 if gradable else 10,
                          solved=round(accuracy * 10) if gradable else 0,
                          accuracy=accuracy, cost_usd=cost, prompt_tokens=1.0, completion_tokens=1.0, calls=1.0,
                          latency_s=1.0)


def _call(uid, cost, prompt, completion):
  return CallRecord(query_uid=uid, query_index=0, role="LLM", role_index=0, kind="single", position=0, model="m",
                    prompt_tokens=prompt, completion_tokens=completion, cost=cost, start=0.0, end=0.0, latency=0.5,
                    error=None, cached=False, attempts=1)


def test_pareto_front():
  rows = [_row("cheap", 0.5, 1.0), _row("dominated", 0.5, 2.0), _row("best", 0.9, 3.0),
          _row("middle", 0.7, 2.0), _row("tie_cost_worse", 0.7, 2.5), _row("nan", float("nan"), 0.1)]
  assert report.pareto_front(rows) == [True, False, True, True, False, False]
  # Identical points do not dominate each other.
  assert report.pareto_front([_row("a", 0.5, 1.0), _row("b", 0.5, 1.0)]) == [True, True]


def test_summarize_counts_failed_queries_apart_from_wrong_ones():
  problems = TASK.load("test", n=4)
  right = f"so \\boxed{{{problems[0].answer}}}"
  outcomes = [
      QueryResult(problems[0], right, [_call(problems[0].uid, 0.01, 10, 5)], 1.0),
      QueryResult(problems[1], "\\boxed{-99999999}", [_call(problems[1].uid, 0.02, 20, 5)], 2.0),
      QueryResult(problems[2], None, [_call(problems[2].uid, 0.0, 0, 0)], 0.0, errors=["x"]),
      QueryResult(problems[3], f"\\boxed{{{problems[3].answer}}}", [], 3.0),
  ]
  row = report.summarize("m", problems, outcomes, TASK, setup="s")
  assert (row.queries, row.failed, row.solved) == (4, 1, 2)
  assert row.accuracy == pytest.approx(2 / 3)  # over the 3 gradable queries
  assert row.cost_usd == pytest.approx(0.03 / 4) and row.calls == pytest.approx(3 / 4)
  assert row.tokens == pytest.approx((10 + 5 + 20 + 5) / 4) and row.latency_s == pytest.approx(1.5)
  with pytest.raises(ValueError, match="paired"):
    report.summarize("m", problems[::-1], outcomes, TASK)


def test_a_query_with_any_failed_call_is_failed_not_graded_and_truncated_replies_are_counted():
  problems = TASK.load("test", n=3)
  right = [f"so \\boxed{{{p.answer}}}" for p in problems]
  cut = dataclasses.replace(_call(problems[0].uid, 0.01, 10, 5), finish_reason="length")
  failed_proposer = dataclasses.replace(_call(problems[1].uid, 0.0, 0, 0), error="HTTP 500")
  outcomes = [
      QueryResult(problems[0], right[0], [cut, _call(problems[0].uid, 0.01, 10, 5)], 1.0),
      # The synthesizer answered right without its failed proposer: not the method's answer, never graded.
      QueryResult(problems[1], right[1], [failed_proposer, _call(problems[1].uid, 0.01, 10, 5)], 1.0,
                  errors=["Proposer 1 (m): HTTP 500"]),
      QueryResult(problems[2], "\\boxed{-99999999}", [_call(problems[2].uid, 0.01, 10, 5)], 1.0),
  ]
  assert report.grade_results(TASK, problems, outcomes) == [True, None, False]
  assert [o.correct for o in outcomes] == [True, None, False]  # graded in place
  assert outcomes[0].answer == problems[0].answer and outcomes[1].answer is not None  # extracted, failed or not
  row = report.summarize("m", problems, outcomes, TASK)
  assert (row.queries, row.failed, row.solved, row.truncated) == (3, 1, 1, 1)
  assert row.accuracy == pytest.approx(0.5)
  assert "| truncated |" in report.markdown_table([row]).splitlines()[0]


def test_write_report_writes_every_file(tmp_path):
  rows = [_row("single", 0.5, 1e-4), _row("hieramas", 0.8, 1e-3), _row("none_gradable", float("nan"), 0.0)]
  views = [report.TopologyView(question="What is $3 + 4$? [x]", roles=["A", "B", "C"],
                               assignment=[["m1", None, "m2"], [None, None, None], ["m1", "m1", "m3"]],
                               adjacency=np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]]), decision_model="d",
                               score=0.3, solved=True)]
  paths = report.write_report(tmp_path, rows, views, extra={"note": float("nan")})
  for name in ("table.md", "table.csv", "results.json", "pareto.png", "topologies.png"):
    assert pathlib.Path(paths[name]).is_file()
  for name in ("pareto.png", "topologies.png"):
    assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
  results = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN written as null
  assert results["note"] is None and results["pareto_front"] == ["single", "hieramas"]
  assert results["rows"][2]["accuracy"] is None
  md = (tmp_path / "table.md").read_text()
  assert "| **hieramas** |" in md and md.count("\n") == 2 + len(rows)
  csv_lines = (tmp_path / "table.csv").read_text().splitlines()
  assert csv_lines[0].startswith("method,setup,queries") and len(csv_lines) == 1 + len(rows)


def test_parse_methods():
  names = baselines.METHODS.names()
  assert names[:2] == ["single", "cot"] and names[-1] == "single_each" and len(names) == 15
  assert evaluation.parse_methods("all") == names and evaluation.parse_methods("") == names
  assert evaluation.parse_methods("hieramas, single") == ["single", "hieramas"]
  with pytest.raises(evaluation.EvaluationError, match="unknown method"):
    evaluation.parse_methods("single,gpt")


POOL = ["GPT-4o-mini", "Qwen3-8B", "Llama-3.1-8B"]


def _plan(methods, has_classifier=True, **flag_values):
  config = tiny_config()
  flags = evaluation.resolve_flags(baselines.METHODS, flag_values, config)
  return evaluation.plan_rows(baselines.METHODS, methods, flags, config, POOL, has_classifier)


def test_rows_take_settings_from_flags_and_the_config():
  config = tiny_config()
  flags = evaluation.resolve_flags(baselines.METHODS, {"sc_samples": 7, "fixed_model": "Qwen3-8B"}, config)
  # An empty model flag is the config's decision model; the others keep their defaults.
  assert flags["baseline_model"] == config.llm.decision_model == "GPT-4o-mini"
  assert (flags["fixed_model"], flags["sc_samples"], flags["debate_agents"]) == ("Qwen3-8B", 7, 3)
  rows = {r.name: r for r in _plan(["single", "cot", "self_consistency", "random_graph", "hieramas"],
                                   sc_samples=7, fixed_model="Qwen3-8B")}
  assert rows["cot"].settings == baselines.SingleSettings(model="Qwen3-8B", chain_of_thought=True)
  assert rows["self_consistency"].setup == "GPT-4o-mini, 7 samples, majority"
  random_graph = rows["random_graph"].settings  # fed by config fields only
  assert (random_graph.seed, random_graph.density) == (config.seed, tuple(config.graphs.candidate_density_range))
  assert rows["hieramas"].setup == f"selector's models, classifier's best of {config.graphs.num_candidates} DAGs"
  with pytest.raises(evaluation.EvaluationError, match="unknown method flag"):
    _plan(["single"], sc_sample=3)
  with pytest.raises(evaluation.EvaluationError, match=r"samples=0 \(--sc_samples\); it must be >= 1"):
    _plan(["self_consistency"], sc_samples=0)
  with pytest.raises(evaluation.EvaluationError, match="baseline_model='GPT-9' is not in the model pool"):
    _plan(["single"], baseline_model="GPT-9")


def test_single_each_skips_the_row_single_already_is_and_ablations_say_when_there_is_no_classifier():
  names = [r.name for r in _plan(["single", "single_each"])]
  assert names == ["single", "single[Qwen3-8B]", "single[Llama-3.1-8B]"]
  assert [r.name for r in _plan(["single_each"])] == [f"single[{m}]" for m in POOL]
  setups = {r.name: r.setup for r in _plan(["hieramas", "hieramas_no_selection", "selector_full_graph"], False)}
  assert setups["hieramas"].endswith("[no classifier: seeded random DAG]")
  assert setups["hieramas_no_selection"].endswith("[no classifier: seeded random DAG]")
  assert not setups["selector_full_graph"].endswith("]")


# ---------------------------------------------------------------------------
# End to end on a smoke-trained run (hashing encoder, simulated pool)
# ---------------------------------------------------------------------------


def tiny_config():
  c = base_config.base_config("math", "smoke")
  c.encoder.kind = "hashing"
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("evaluate") / "run"
  train.train_and_evaluate(tiny_config(), workdir, progress=False)
  return workdir


def test_evaluate_runs_every_method_and_writes_the_report(trained, tmp_path):
  out = tmp_path / "eval"
  results = evaluation.evaluate(tiny_config(), trained, out, log=lambda s: None)
  for name in ("table.md", "table.csv", "results.json", "pareto.png", "topologies.png"):
    assert (out / name).is_file(), name
  assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
  rows = {r["method"]: r for r in results["rows"]}
  pool = ["Qwen3-8B", "Qwen3-Next-80B-A3B", "Llama-3.1-8B", "DeepSeek-V3.2", "Gemma-3-27B", "GPT-5-nano",
          "GPT-5-mini"]  # the paper's pool without GPT-4o-mini, which 'single' already is
  expected = [m for m in baselines.METHODS.names() if m != "single_each"] + [f"single[{m}]" for m in pool]
  assert sorted(rows) == sorted(expected)
  assert all(r["queries"] == 8 and r["failed"] == 0 for r in rows.values())
  # Calls per query follow each method's shape (defaults: 5 samples, 3x2 debate, 3+1 mixture,
  # (3+1)x2 MLPO, 2x3+1 NeuroMAS; no selection: 3 roles x (2+1) positions + decision; the paper's Full-Graph and
  # Random-Graph: one call per role + decision).
  shape = {"single": 1, "cot": 1, "self_consistency": 5, "debate": 6, "mixture": 4, "mlpo": 8, "neuromas": 7,
           "hieramas_no_selection": 10, "full_graph": 4, "random_graph": 4}
  for method, calls in shape.items():
    assert rows[method]["calls"] == calls, method
  for method in ("full_graph", "random_graph"):  # the decision model everywhere, as the setup says
    assert rows[method]["setup"].startswith("GPT-4o-mini in every role (1 call, no proposers)"), method
  assert "one random DAG for all queries (density 0-1)" in rows["random_graph"]["setup"]
  # The three selector-based rows share the selector's assignment: same number of calls.
  assert (rows["selector_full_graph"]["calls"] == rows["selector_random_graph"]["calls"]
          == rows["hieramas_no_classifier"]["calls"])
  for r in rows.values():
    assert 0.0 <= r["accuracy"] <= 1.0 and r["cost_usd"] > 0 and r["latency_s"] > 0
  # The report's front flags agree with the rows.
  front = [r["method"] for r in results["rows"] if r["on_front"]]
  assert front == results["pareto_front"] and results["hieramas_on_front"] == rows["hieramas"]["on_front"]
  assert len(results["topologies"]) == 4
  # HieraMAS's verdicts are those of the system's own run (same plans, same cached calls).
  from hieramas_jax.system import HieraMAS
  system = HieraMAS.from_workdir(trained)
  try:
    problems = [p for p in environment.load_splits(tiny_config(), system.task)["test"]]
    runs = system.run(problems)
    assert results["per_query"]["solved"]["hieramas"] == [r.correct for r in runs]
    assert rows["hieramas"]["cost_usd"] == pytest.approx(np.mean([r.cost_usd for r in runs]), rel=1e-9)
    chosen = [np.asarray(r.plan.adjacency).tolist() for r in runs[:4]]
    assert [v["adjacency"] for v in results["topologies"]] == chosen
  finally:
    system.close()


def test_evaluate_rejects_unknown_models_and_splits(trained, tmp_path):
  with pytest.raises(evaluation.EvaluationError, match="fixed_model='GPT-9' is not in the model pool"):
    evaluation.evaluate(tiny_config(), trained, tmp_path, methods="single", flag_values={"fixed_model": "GPT-9"},
                        log=lambda s: None)
  with pytest.raises(evaluation.EvaluationError, match="--split"):
    evaluation.evaluate(tiny_config(), trained, tmp_path, methods="single", split="dev", log=lambda s: None)


def test_command_line(trained, tmp_path):
  out = tmp_path / "cli"
  proc = subprocess.run(
      [sys.executable, "-m", "launch.evaluate", "--config=configs/math.py:smoke", f"--workdir={trained}",
       f"--out={out}", "--methods=single,debate,hieramas", "--limit=3", "--debate_agents=2", "--debate_rounds=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| **hieramas** |" in proc.stdout and "Pareto front" in proc.stdout
  results = json.loads((out / "results.json").read_text())
  assert [r["method"] for r in results["rows"]] == ["single", "debate", "hieramas"]
  assert all(r["queries"] == 3 for r in results["rows"])
  assert results["rows"][1]["calls"] == 6 and "2 agents x 3 rounds" in results["rows"][1]["setup"]
  assert (out / "topologies.png").is_file() and (out / "pareto.png").is_file()


# ---------------------------------------------------------------------------
# Adding a baseline: a function and a registry entry, nothing else
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FirstOfSettings:
  """``calls`` plain samples of ``model``; the first that answers is final."""

  model: str = baselines.option("", flag="baseline_model", config="llm.decision_model",
                                help_text=baselines.options.MODEL_HELP, pool_model=True)
  calls: int = baselines.option(2, flag="first_of_calls", help_text="First-of: samples per query.")


def first_of(ctx, settings):
  """Place 1: the method (``calls`` calls per query)."""

  async def one(q):
    messages = baselines.plain_messages(ctx.task, q.problem)
    answers = [await q.call(f"Sample {s + 1}", s, "sample", s, settings.model, messages, s, 0.0)
               for s in range(settings.calls)]
    return q.outcome(next((r.text for r, _ in answers if r.ok), None))

  return ctx.run_queries([settings.model], one)


def test_a_registered_toy_method_runs_through_the_evaluation_on_the_simulator(trained, tmp_path):
  registry = baselines.METHODS.copy()
  # Place 2: the registry entry.
  registry.register(baselines.Method("first_of", first_of, FirstOfSettings, "first answer of --first_of_calls samples",
                                     "{model}, first of {calls}"))
  flag = {f.name: f for f in registry.flags()}["first_of_calls"]
  assert (flag.default, flag.methods) == (2, ("first_of",)) and "first_of" in registry.help()
  assert "first_of" in {f.name: f for f in registry.flags()}["baseline_model"].help
  assert "first_of" not in baselines.METHODS  # the copy only
  results = evaluation.evaluate(tiny_config(), trained, tmp_path, methods="single,first_of", limit=3,
                                flag_values={"first_of_calls": 3}, registry=registry, topology_queries=0,
                                log=lambda s: None)
  rows = {r["method"]: r for r in results["rows"]}
  assert list(rows) == ["single", "first_of"]
  assert rows["first_of"]["calls"] == 3 and rows["first_of"]["setup"] == "GPT-4o-mini, first of 3"
  assert rows["first_of"]["queries"] == 3 and rows["first_of"]["failed"] == 0
  assert results["settings"]["first_of_calls"] == 3
  # Its first sample is the single call (same prompt, model and sample): the same verdicts.
  assert results["per_query"]["solved"]["first_of"] == results["per_query"]["solved"]["single"]


def test_the_registry_refuses_clashing_entries():
  registry = baselines.METHODS.copy()
  entry = baselines.Method("first_of", first_of, FirstOfSettings, "d", "s")
  registry.register(entry)
  with pytest.raises(ValueError, match="registered already"):
    registry.register(entry)

  @dataclasses.dataclass(frozen=True)
  class Clash:
    calls: int = baselines.option(9, flag="sc_samples")

  with pytest.raises(ValueError, match="--sc_samples .* disagrees"):
    registry.register(baselines.Method("clash", first_of, Clash, "d", "s"))
  assert "clash" not in registry

  @dataclasses.dataclass
  class Mutable:
    calls: int = 1

  with pytest.raises(TypeError, match="frozen dataclass"):
    registry.register(baselines.Method("mutable", first_of, Mutable, "d", "s"))
