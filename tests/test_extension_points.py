"""The cost of change of docs/extending.md, proven: each extension is defined here and nothing else is edited.

- A baseline: one function + one entry in the method registry; ``evaluation.evaluate`` reports its row.
- A graph classifier: one module + one entry in ``policy.CLASSIFIER_MODELS``; stage 2 trains it, the policy
  saves, loads and scores with it, ``HieraMAS`` plans with it.
- A task: one ``Task`` subclass + ``tasks.register_task``; training runs on the simulator, ``HieraMAS`` plans
  and runs it.
"""

import asyncio
import dataclasses
import math
import random
import re
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hieramas_jax import baselines, evaluation, policy, system, tasks, train
from hieramas_jax import config as base_config
from hieramas_jax.tasks.base import Problem, RoleSpec, Task

# ---------------------------------------------------------------------------
# A graph classifier: one module (this class) and one registry entry
# ---------------------------------------------------------------------------


class MeanAggregationClassifier(nnx.Module):
  """One mean-aggregation step over the DAG (each role averages its predecessors), then mean-pooling and an MLP.

  The contract of a graph classifier (docs/extending.md): attributes ``num_roles`` and
  ``query_dim``; ``__call__(query_emb [B, D], adjs [K, N, N] or [B, K, N, N], role_mask
  [N] / [B, N] / None, impl=...)`` -> logits [B, K]; ``impl`` names a GCN form and may be ignored.
  """

  def __init__(self, num_roles: int, query_dim: int, hidden_dim: int, rngs: nnx.Rngs):
    self.num_roles, self.query_dim = num_roles, query_dim
    self.role_emb = nnx.Param(0.1 * jax.random.normal(rngs.params(), (num_roles, hidden_dim)))
    self.query_proj = nnx.Linear(query_dim, hidden_dim, rngs=rngs)
    self.update = nnx.Linear(2 * hidden_dim, hidden_dim, rngs=rngs)
    self.head = nnx.Linear(hidden_dim, 1, rngs=rngs)

  def __call__(self, query_emb, adjs, role_mask=None, impl: str = "dense"):
    del impl  # one form only
    if adjs.ndim == 3:  # one pool for every query
      adjs = jnp.broadcast_to(adjs[None], (query_emb.shape[0],) + adjs.shape)
    num_roles = adjs.shape[-1]
    mask = jnp.ones((num_roles,), query_emb.dtype) if role_mask is None else jnp.asarray(role_mask, query_emb.dtype)
    mask = mask[None, None, :] if mask.ndim == 1 else mask[:, None, :]  # [B or 1, 1, N]
    nodes = (self.role_emb[...][None, None] + self.query_proj(query_emb)[:, None, None, :]) * mask[..., None]
    nodes = jnp.broadcast_to(nodes, adjs.shape[:2] + nodes.shape[-2:])  # [B, K, N, H]
    predecessors = jnp.maximum(adjs.sum(-2), 1.0)[..., None]  # adj[i, j] = 1: role i feeds role j
    messages = jnp.einsum("bkij,bkih->bkjh", adjs, nodes) / predecessors
    nodes = jax.nn.relu(self.update(jnp.concatenate([nodes, messages], -1))) * mask[..., None]
    pooled = nodes.sum(-2) / jnp.maximum(mask.sum(-1), 1.0)[..., None]
    return self.head(pooled)[..., 0]


def build_mean_aggregation(num_roles, query_dim, hparams, rngs):
  """The registry entry's builder: the config's ``gcn`` hyperparameters in, a module out."""
  return MeanAggregationClassifier(num_roles, query_dim, hparams["hidden_dim"], rngs)


def smoke_config(task: str = "math", arg: str = "smoke"):
  c = base_config.base_config(task, arg)
  c.encoder.kind = "hashing"
  c.inference.max_skipped_roles = 0  # as tests/test_train.py: stage 2 then sees DAGs that differ
  return c


@pytest.fixture(scope="module")
def swapped_gnn_run(tmp_path_factory):
  """A smoke run of both stages whose graph classifier is ``MeanAggregationClassifier`` (registered meanwhile)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(policy.CLASSIFIER_MODELS, "mean_aggregation", build_mean_aggregation)
    config = smoke_config(arg="smoke,gcn.model=mean_aggregation")  # as --config=configs/math.py:smoke,gcn.model=...
    workdir = tmp_path_factory.mktemp("gnn") / "run"
    summary = train.train_and_evaluate(config, workdir, progress=False)
    yield {"config": config, "workdir": workdir, "summary": summary}


def test_a_graph_classifier_is_one_module_and_one_registry_entry(swapped_gnn_run):
  workdir = swapped_gnn_run["workdir"]
  assert "hieramas" in swapped_gnn_run["summary"]["test"]
  trained = policy.HieraMASPolicy.load(workdir)
  assert trained.spec.classifier_model == "mean_aggregation" and trained.has_classifier, trained.graph_choice_reason
  model = nnx.merge(*trained.classifier)
  assert isinstance(model, MeanAggregationClassifier)
  queries = np.random.default_rng(0).normal(size=(3, trained.spec.embedding_dim)).astype(np.float32)
  pool = trained.candidate_pool()
  scores = trained.score(queries, pool)
  assert scores.shape == (3, pool.shape[0]) and np.isfinite(scores).all()
  np.testing.assert_allclose(scores, np.asarray(model(jnp.asarray(queries), jnp.asarray(pool, jnp.float32))),
                             rtol=1e-5, atol=1e-5)
  assert np.ptp(scores, axis=1).max() > 0  # the pool's DAGs are told apart
  with system.HieraMAS.from_workdir(workdir) as hieramas:
    assert hieramas.graph_choice == system.CLASSIFIER
    plans = hieramas.plan(["Compute 17 + 25.", "Compute 6 * 7."])
    for plan in plans:  # the classifier's best candidate is the one planned
      row = hieramas.score_graphs([plan.problem], pool)[0]
      assert plan.graph_index == int(np.argmax(row)) and plan.score == pytest.approx(float(row.max()), abs=1e-5)


def test_an_unregistered_classifier_fails_naming_the_registry():
  with pytest.raises(ValueError, match="graph classifier 'no_such_gnn' is not one of"):
    policy.new_classifier("no_such_gnn", 3, 8, {}, 0)


# ---------------------------------------------------------------------------
# A baseline: one function (with its settings) and one registry entry
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShortestOfSettings:
  """``calls`` parallel samples of ``model``; the shortest answer that came back is final."""

  calls: int = baselines.option(2, flag="shortest_of_calls", help_text="Shortest-of: samples per query.")
  model: str = baselines.option("", flag="baseline_model", config="llm.decision_model",
                                help_text=baselines.options.MODEL_HELP, pool_model=True)


def shortest_of(ctx, settings):
  """The method: ``calls`` samples per query sent at once, the shortest successful one is the answer."""

  async def one(q):
    messages = baselines.plain_messages(ctx.task, q.problem)
    samples = await asyncio.gather(*(q.call(f"Sample {s + 1}", s, "sample", s, settings.model, messages, s, 0.0)
                                     for s in range(settings.calls)))
    texts = sorted((response.text for response, _ in samples if response.ok), key=len)
    return q.outcome(texts[0] if texts else None, answered=len(texts))

  return ctx.run_queries([settings.model], one)


def test_a_baseline_is_one_function_and_one_registry_entry(swapped_gnn_run, tmp_path, monkeypatch):
  registry = baselines.METHODS.copy()
  registry.register(baselines.Method("shortest_of", shortest_of, ShortestOfSettings,
                                     "shortest answer of --shortest_of_calls samples", "{model}, shortest of {calls}"))
  monkeypatch.setattr(baselines, "METHODS", registry)  # the process-wide registry, for this test only
  results = evaluation.evaluate(swapped_gnn_run["config"], swapped_gnn_run["workdir"], tmp_path / "eval",
                                methods="single,shortest_of", limit=3, flag_values={"shortest_of_calls": 3},
                                topology_queries=0, log=lambda s: None)
  rows = {r["method"]: r for r in results["rows"]}
  assert list(rows) == ["single", "shortest_of"]
  row = rows["shortest_of"]
  assert row["setup"] == f"{swapped_gnn_run['config'].llm.decision_model}, shortest of 3"
  assert (row["queries"], row["failed"], row["calls"]) == (3, 0, 3)
  assert 0.0 <= row["accuracy"] <= 1.0 and row["cost_usd"] > 0 and row["latency_s"] > 0
  assert row["cost_usd"] > rows["single"]["cost_usd"]  # three calls a query cost more than one
  assert "shortest_of" in (tmp_path / "eval" / "table.md").read_text()


# ---------------------------------------------------------------------------
# A task: one Task subclass and one registration
# ---------------------------------------------------------------------------


class ReverseWordTask(Task):
  """Reverse a word; the answer is the last ``ANSWER: <text>`` line. Subjects: word shapes; levels: lengths."""

  name = "reverse_word"
  answer_instruction = "End with one line 'ANSWER: <the reversed word>'."
  task_rules = "Answer with the reversed word only, in lower case."
  roles = (RoleSpec("Speller", "You spell words letter by letter, carefully."),
           RoleSpec("Checker", "You check a reversed word letter by letter against the original."),
           RoleSpec("Planner", "You say how to reverse the word without losing a letter.", gives_answer=False))
  _ANSWER = re.compile(r"ANSWER:\s*(\S+)")

  def load(self, split: str = "test", *, n: int = 60, seed: int = 0, **unused) -> list[Problem]:
    del unused  # e.g. path=: this task makes its problems
    rng = random.Random(f"{self.name}/{split}/{seed}")
    words = set()
    while len(words) < n:
      words.add("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7))))
    return [Problem(uid=f"{self.name}/{word}", question=f"Reverse the word '{word}'.", answer=word[::-1],
                    subject="vowel_start" if word[0] in "aeiou" else "consonant_start", level=len(word) - 2)
            for word in sorted(words)]

  def extract(self, text: str) -> str | None:
    found = self._ANSWER.findall(text or "")
    return found[-1].strip(".").lower() if found else None

  def grade(self, problem: Problem, text: str) -> bool:
    return self.extract(text) == problem.answer

  def render_answer(self, problem: Problem, correct: bool, rng: random.Random) -> str:
    word = problem.answer
    if not correct:  # one letter changed: a plausible slip, never the right word
      i = rng.randrange(len(word))
      word = word[:i] + rng.choice([c for c in string.ascii_lowercase if c != word[i]]) + word[i + 1:]
    return f"Reading the letters from the end gives the word.\nANSWER: {word}"


@pytest.fixture
def reverse_word_task(monkeypatch):
  monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))  # pylint: disable=protected-access
  tasks.register_task("reverse_word", ReverseWordTask)
  return tasks.get_task("reverse_word")


def test_a_task_is_one_class_and_one_registration(reverse_word_task, tmp_path):
  problems = reverse_word_task.load("test", n=10)
  rng = random.Random(0)
  for p in problems:  # the simulator's contract: a right rendering grades right, a wrong one wrong
    assert reverse_word_task.grade(p, reverse_word_task.render_answer(p, True, rng))
    assert not reverse_word_task.grade(p, reverse_word_task.render_answer(p, False, rng))
  assert "reverse_word" in tasks.task_names()
  with pytest.raises(ValueError, match="registered already"):
    tasks.register_task("reverse_word", ReverseWordTask)

  config = smoke_config("reverse_word")
  config.task.source = "files"  # the task's own problems (load), not the MATH generator
  config.stages = "stage1"
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, workdir, progress=False)
  with system.HieraMAS.from_workdir(workdir) as hieramas:
    assert [r.name for r in hieramas.roles] == ["Speller", "Checker", "Planner"]
    plans = hieramas.plan(problems[:4])
    assert all(len(plan.assignment) == 3 for plan in plans)
    results = hieramas.run(plans)
  assert [r.problem.uid for r in results] == [p.uid for p in problems[:4]]
  for result in results:
    assert not result.errors and result.final_text and "ANSWER:" in result.final_text
    assert result.answer == reverse_word_task.extract(result.final_text)  # graded by the task's own grader
    assert result.correct == (result.answer == result.problem.answer)
    assert result.cost_usd > 0 and math.isfinite(result.latency_s)
