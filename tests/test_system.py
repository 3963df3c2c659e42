"""The inference object: loading across device layouts, planning, running, graph scoring."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from hieramas_jax import config as base_config, encoders, graphs, policy, system
from hieramas_jax.llm import cache as llm_cache
from hieramas_jax.llm.base import error_response
from hieramas_jax.models import gcn
from hieramas_jax.models import selector as sel
from hieramas_jax.tasks.base import Problem
from hieramas_jax.train import builders, environment, evaluation, rollout, stage2

TEXT_QUERIES = ("What is 17 + 25?", "A square has side 3. What is its area?")


# ---------------------------------------------------------------------------
# Helpers (also imported by tests/test_score_graphs.py and the 8-device subprocess)
# ---------------------------------------------------------------------------


def small_config(seed: int = 0):
  """The smoke config with the hashing encoder (fast, no model files)."""
  c = base_config.base_config("math", "smoke")
  c.encoder.kind = "hashing"
  c.seed = seed
  return c


def fresh_models(config):
  """(graphdef, params) of an untrained selector and classifier for ``config`` (seeded)."""
  dim = encoders.HashingEncoder().dim
  num_roles = len(environment.load_task(config).roles)
  return builders.build_selector(config, dim, dim), builders.build_classifier(config, num_roles, dim)


def save_trained(workdir, config, selector_params, classifier_params=None) -> None:
  """Writes a workdir's checkpoints through the policy's schema (what launch.train writes), at the last step."""
  encoder = encoders.HashingEncoder()
  task = environment.load_task(config)
  spec = policy.PolicySpec.from_config(config, task.roles, environment.pool_specs(config), encoder.encoder_id,
                                       encoder.dim)
  (sel_gd, _), (cls_gd, _) = fresh_models(config)
  classifier = (cls_gd, classifier_params) if classifier_params is not None else None
  trained = policy.HieraMASPolicy(spec, (sel_gd, selector_params), encoder.encode(list(spec.option_texts)), classifier)
  trained.save(workdir, config=config, step=config.stage1.steps)


def test_problems(config, count: int = 6) -> list[Problem]:
  task = environment.load_task(config)
  return environment.load_splits(config, task)["test"][:count]


test_problems.__test__ = False  # a helper, not a test


def scoring_inputs(dim: int, num_roles: int, batch: int = 5, pool_size: int = 37):
  """Seeded embeddings [B, D], a shared pool [K, N, N] and per-query pools [B, K, N, N]."""
  rng = np.random.default_rng(11)
  emb = rng.normal(size=(batch, dim)).astype(np.float32)
  dags = graphs.dag_pool(4, num_roles, 200, allow_fewer=True)  # every distinct DAG it finds
  shared = dags[rng.integers(0, len(dags), pool_size)]
  per_query = dags[rng.integers(0, len(dags), (batch, pool_size))]
  return emb, shared, per_query


def plan_record(planned) -> list[dict]:
  return [{"uid": p.problem.uid, "assignment": p.assignment, "adjacency": np.asarray(p.adjacency).tolist(),
           "graph_index": p.graph_index, "score": float(p.score)} for p in planned]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir with both checkpoints, its config and parameters, and the loaded system."""
  workdir = tmp_path_factory.mktemp("trained")
  config = small_config()
  (sel_gd, sel_p), (cls_gd, cls_p) = fresh_models(config)
  save_trained(workdir, config, sel_p, cls_p)
  hieramas = system.HieraMAS.from_workdir(workdir)
  yield {"workdir": workdir, "config": config, "selector": (sel_gd, sel_p), "classifier": (cls_gd, cls_p),
         "system": hieramas}
  hieramas.close()


# ---------------------------------------------------------------------------
# Loading and agreement with the training code
# ---------------------------------------------------------------------------


def test_from_workdir_decides_as_the_training_code(trained):
  hm, config = trained["system"], trained["config"]
  assert hm.has_classifier and hm.graph_choice == system.CLASSIFIER and hm.graph_choice_reason == ""
  assert [r.name for r in hm.roles] == ["Mathematical Analyst", "Math Solver", "Inspector"]
  assert hm.decision_model == config.llm.decision_model and hm.decision_model in hm.model_names
  assert hm.num_devices == jax.local_device_count() == 1
  # The training environment of the same config: same option embeddings, pool, assignments and graphs.
  env = environment.build_environment(config, trained["workdir"])
  try:
    np.testing.assert_array_equal(np.asarray(hm.policy.option_emb), env.option_emb)
    pool = stage2.candidate_pool(env)
    np.testing.assert_array_equal(hm.candidate_pool(), pool)
    problems = env.splits["test"]
    np.testing.assert_array_equal(hm.query_embeddings(problems), env.query_emb["test"])
    sel_gd, sel_p = trained["selector"]
    expected = sel.actions_to_assignment(
        rollout.greedy_actions(env, sel_gd, sel_p, "test", np.arange(len(problems))), hm.model_names)
    assert hm.assignments(problems) == expected
    cls_gd, cls_p = trained["classifier"]
    best, scores = evaluation.choose_graphs(env, cls_gd, cls_p, "test", pool)
  finally:
    env.close()
  mine = hm.score_graphs(problems, pool)
  np.testing.assert_allclose(mine, scores, rtol=1e-5, atol=1e-6)
  planned = hm.plan(problems)
  assert [p.graph_index for p in planned] == mine.argmax(1).tolist()
  top2 = np.sort(scores, axis=1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 1e-5  # the unblocked reference may differ in the last bits on near-ties
  assert clear.sum() >= len(problems) // 2
  np.testing.assert_array_equal(np.array([p.graph_index for p in planned])[clear], best[clear])
  chosen, chosen_scores = hm.choose_graphs(problems)
  for p, adj, s in zip(planned, chosen, chosen_scores):
    np.testing.assert_array_equal(p.adjacency, pool[p.graph_index])
    np.testing.assert_array_equal(p.adjacency, adj)
    assert p.score == float(s) == float(mine[planned.index(p), p.graph_index])
    assert p.decision_model == hm.decision_model and list(p.roles) == list(hm.roles)
    assert len(p.assignment) == 3 and all(len(row) == config.selector.num_proposers + 1 for row in p.assignment)


def test_text_queries_and_ablations(trained):
  hm = trained["system"]
  problems = hm.problems(list(TEXT_QUERIES))
  assert problems[0].question == TEXT_QUERIES[0] and problems[0].answer == ""
  assert problems[0].uid == hm.problems([TEXT_QUERIES[0]])[0].uid != problems[1].uid
  with pytest.raises(TypeError, match="wrap a single one"):
    hm.problems("one query")
  planned = hm.plan(list(TEXT_QUERIES))
  assert [p.problem.uid for p in planned] == [p.uid for p in problems]
  fixed = hm.plan(list(TEXT_QUERIES), fixed_model="Llama-3.1-8B")
  assert all(m == "Llama-3.1-8B" for p in fixed for row in p.assignment for m in row)
  assert hm.assignments(list(TEXT_QUERIES), fixed_model="Llama-3.1-8B") == [p.assignment for p in fixed]
  with pytest.raises(ValueError, match="not in the pool"):
    hm.assignments(list(TEXT_QUERIES), fixed_model="GPT-9")
  shuffled = hm.plan(list(TEXT_QUERIES), random_graph=True)
  assert all(np.isnan(p.score) for p in shuffled)
  # The random choice depends on the query alone, not on the batch it comes in.
  alone = hm.plan([TEXT_QUERIES[1]], random_graph=True)
  assert alone[0].graph_index == shuffled[1].graph_index
  # A pool given per query.
  pools = np.stack([graphs.dag_pool(s, 3, 5, allow_fewer=True)[:5] for s in (1, 2)])
  planned = hm.plan(list(TEXT_QUERIES), pool=pools)
  for b, p in enumerate(planned):
    np.testing.assert_array_equal(p.adjacency, pools[b, p.graph_index])


def test_scoring_input_errors(trained):
  hm = trained["system"]
  emb, shared, per_query = scoring_inputs(hm.encoder.dim, 3)
  with pytest.raises(ValueError, match=r"expected \[B, 256\]"):
    hm.score_graphs(emb[:, :10], shared)
  with pytest.raises(graphs.InvalidGraphError, match=r"expected \[K, 3, 3\].*or \[B, K, 3, 3\]"):
    hm.score_graphs(emb, shared[:, :2, :2])
  with pytest.raises(graphs.InvalidGraphError, match=r"for 5 queries; expected \[5, K, 3, 3\]"):
    hm.score_graphs(emb, per_query[:4])
  bad = shared.copy()
  bad[7] = [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
  with pytest.raises(graphs.InvalidGraphError, match="graph 7: .*cycle"):
    hm.score_graphs(emb, bad)
  bad = per_query.copy()
  bad[2, 4, 0, 0] = 1
  with pytest.raises(graphs.InvalidGraphError, match="graph 4 of query 2: .*self-loop"):
    hm.score_graphs(emb, bad)
  bad = shared.copy()
  bad[0, 0, 1] = 2
  with pytest.raises(graphs.InvalidGraphError, match="graph 0: .*0 or 1"):
    hm.score_graphs(emb, bad)


def test_validate_graph_stack_agrees_with_the_per_graph_validator():
  rng = np.random.default_rng(0)
  stack = (rng.random((400, 5, 5)) < 0.2).astype(np.int8)
  stack[:, np.arange(5), np.arange(5)] = 0
  stack[::3] = np.triu(stack[::3], 1)  # a third are DAGs for sure
  for k in range(len(stack)):
    try:
      graphs.validate_adjacency(stack[k])
      ok = True
    except graphs.InvalidGraphError:
      ok = False
    if ok:
      system.validate_graph_stack(stack[k:k + 1], 5)
    else:
      with pytest.raises(graphs.InvalidGraphError, match="graph 0: "):
        system.validate_graph_stack(stack[k:k + 1], 5)


@pytest.mark.parametrize("batch,pool_size,block,per_query", [(4, 13, None, False), (1, 1, None, False),
                                                              (3, 40, 7, True), (6, 9, 64, False)])
def test_sharded_scorer_matches_the_plain_scorer(batch, pool_size, block, per_query):
  model = gcn.GraphClassifier(4, 12, role_dim=4, hidden_dim=8, mlp_dim=8, rngs=nnx.Rngs(3))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(batch)
  q = rng.normal(size=(batch, 12)).astype(np.float32)
  dags = graphs.dag_pool(0, 4, 200, allow_fewer=True)
  adjs = dags[rng.integers(0, len(dags), (batch, pool_size) if per_query else pool_size)]
  scorer = system.ShardedGraphScorer(graphdef, params, impl="segment", block=block)
  got = scorer(q, adjs)
  want = np.asarray(gcn.score_pool(graphdef, params, q, adjs.astype(np.float32), impl="segment"))
  assert got.shape == (batch, pool_size)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Device layouts: 8 devices (sharded params) -> checkpoint -> 1 device
# ---------------------------------------------------------------------------

_EIGHT_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, {tests!r})
    import test_system as T
    from hieramas_jax import system
    assert jax.device_count() == 8, jax.devices()
    config = T.small_config()
    (sel_gd, sel_p), (cls_gd, cls_p) = T.fresh_models(config)
    mesh = Mesh(np.array(jax.devices()), ("d",))
    def place(x):
      spec = P("d") if x.ndim and x.shape[0] % 8 == 0 else P()
      return jax.device_put(x, NamedSharding(mesh, spec))
    sel_p, cls_p = jax.tree_util.tree_map(place, sel_p), jax.tree_util.tree_map(place, cls_p)
    widest = max(len(x.sharding.device_set) for x in jax.tree_util.tree_leaves((sel_p, cls_p)))
    hm = system.HieraMAS.from_parts(config, (sel_gd, sel_p), (cls_gd, cls_p), workdir={workdir!r})
    queries = T.test_problems(config) + list(T.TEXT_QUERIES)
    planned = hm.plan(queries)
    emb, shared, per_query = T.scoring_inputs(hm.encoder.dim, len(hm.roles))
    np.savez({scores!r}, texts=hm.score_graphs(queries, hm.candidate_pool()), shared=hm.score_graphs(emb, shared),
             per_query=hm.score_graphs(emb, per_query))
    T.save_trained({workdir!r}, config, sel_p, cls_p)  # saved from the 8-device layout
    json.dump({{"plans": T.plan_record(planned), "devices": hm.num_devices, "widest": widest}},
              open({plans!r}, "w"))
""")


@pytest.fixture(scope="module")
def eight_device_run(tmp_path_factory):
  """Plans and scores computed in an 8-CPU-device process, which then saves its checkpoints."""
  root = tmp_path_factory.mktemp("eight")
  paths = {"workdir": str(root / "run"), "scores": str(root / "scores.npz"), "plans": str(root / "plans.json")}
  script = _EIGHT_DEVICES.format(tests=os.path.dirname(os.path.abspath(__file__)), **paths)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  record = json.loads(pathlib.Path(paths["plans"]).read_text())
  with np.load(paths["scores"]) as f:
    scores = {k: f[k] for k in f.files}
  return {"workdir": paths["workdir"], "record": record, "scores": scores}


def test_score_graphs_identical_on_1_and_8_devices(eight_device_run):
  record = eight_device_run["record"]
  assert record["devices"] == 8 and record["widest"] == 8  # really sharded there
  assert jax.device_count() == 1
  hm = system.HieraMAS.from_workdir(eight_device_run["workdir"])
  try:
    assert hm.num_devices == 1
    config = hm.config
    queries = test_problems(config) + list(TEXT_QUERIES)
    emb, shared, per_query = scoring_inputs(hm.encoder.dim, len(hm.roles))
    want = eight_device_run["scores"]
    np.testing.assert_array_equal(hm.score_graphs(queries, hm.candidate_pool()), want["texts"])
    np.testing.assert_array_equal(hm.score_graphs(emb, shared), want["shared"])
    np.testing.assert_array_equal(hm.score_graphs(emb, per_query), want["per_query"])
  finally:
    hm.close()


def test_checkpoint_saved_on_8_devices_plans_the_same_on_1(eight_device_run):
  hm = system.HieraMAS.from_workdir(eight_device_run["workdir"])
  try:
    for leaf in jax.tree_util.tree_leaves(hm.policy.selector[1]):
      assert len(leaf.sharding.device_set) == 1
    queries = test_problems(hm.config) + list(TEXT_QUERIES)
    assert plan_record(hm.plan(queries)) == eight_device_run["record"]["plans"]
  finally:
    hm.close()


# ---------------------------------------------------------------------------
# Partial workdirs
# ---------------------------------------------------------------------------


def test_without_stage2_plans_with_random_graphs_and_says_so(tmp_path, trained):
  config = trained["config"]
  save_trained(tmp_path, config, trained["selector"][1])
  hm = system.HieraMAS.from_workdir(tmp_path)
  try:
    assert not hm.has_classifier and hm.graph_choice == system.RANDOM
    assert "no stage-2 checkpoint" in hm.graph_choice_reason and "random" in hm.graph_choice_reason
    assert not (tmp_path / "checkpoints" / "stage2").exists()
    problems = test_problems(config)
    planned = hm.plan(problems)
    pool = hm.candidate_pool()
    for p in planned:
      assert np.isnan(p.score)
      np.testing.assert_array_equal(p.adjacency, pool[p.graph_index])
    assert [p.graph_index for p in hm.plan(problems)] == [p.graph_index for p in planned]
    assert len({p.graph_index for p in hm.plan(test_problems(config, 8))}) > 1
    # The selector is the same one the full workdir loads.
    assert [p.assignment for p in planned] == trained["system"].assignments(problems)
    with pytest.raises(RuntimeError, match="no graph classifier"):
      hm.score_graphs(problems, pool)
  finally:
    hm.close()


def test_a_stage2_checkpoint_trained_without_positive_labels_is_not_used(tmp_path, trained):
  # Workdirs written before stage 2 checked its labels hold fresh classifier parameters next to such data.
  config = trained["config"]
  save_trained(tmp_path, config, trained["selector"][1], trained["classifier"][1])
  q, g, n = 4, 3, len(environment.load_task(config).roles)
  data = stage2.GraphData(adjs=np.zeros((q, g, n, n), np.int8), rewards=np.full((q, g), -1.0),
                          solved=np.zeros((q, g), bool), valid=np.ones((q, g), bool),
                          labels=np.zeros((q, g), np.int8), cost=np.zeros((q, g)))
  (tmp_path / "stage2_data").mkdir()
  np.savez(tmp_path / "stage2_data" / "train.npz", **dataclasses.asdict(data))
  hm = system.HieraMAS.from_workdir(tmp_path)
  try:
    assert not hm.has_classifier and hm.graph_choice == system.RANDOM
    assert "no positive label" in hm.graph_choice_reason and "random" in hm.graph_choice_reason
    assert np.isnan(hm.plan(test_problems(config, 2))[0].score)
  finally:
    hm.close()


class FailingModel:
  """The simulator behind ``backend``, except that every call of ``model`` fails."""

  def __init__(self, backend, model):
    self.backend, self.model = backend, model

  def known_models(self):
    return self.backend.known_models()

  async def complete(self, model, messages, *, sample_index=0, **params):
    if model == self.model:
      return error_response(model, "HTTP 503: scripted outage")
    return await self.backend.complete(model, messages, sample_index=sample_index, **params)


def test_run_reports_queries_with_a_failed_role_call_as_failed_not_graded(trained, tmp_path):
  config = trained["config"]
  problems = test_problems(config, 4)
  task = environment.load_task(config)
  simulated = environment.make_backend(small_config(), environment.pool_specs(config), task, problems, tmp_path)
  broken = FailingModel(simulated, "Qwen3-8B")
  hm = system.HieraMAS.from_workdir(trained["workdir"], backend=broken)
  try:
    # Qwen3-8B at every role position; the decision model (GPT-4o-mini) still answers.
    results = hm.run(problems, fixed_model="Qwen3-8B")
    for r in results:
      assert r.final_text is not None and r.failed and r.correct is None
      assert r.errors and all("scripted outage" in e for e in r.errors)
    healthy = hm.run(problems, fixed_model="GPT-5-nano")
    assert not any(r.failed for r in healthy) and all(r.correct is not None for r in healthy)
  finally:
    hm.close()
    simulated.close()


def test_close_closes_the_backend_it_built(trained):
  hm = system.HieraMAS.from_workdir(trained["workdir"])
  backend = hm.backend  # built on first use: the simulator behind the workdir's response cache
  hm.close()
  assert hm._backend is None  # pylint: disable=protected-access
  with pytest.raises(llm_cache.CacheError):
    len(backend.cache)  # its cache file is closed


def test_without_stage1_is_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained HieraMAS"):
    system.HieraMAS.from_workdir(tmp_path / "missing")
  assert not (tmp_path / "missing").exists()  # nothing created on the way
  (tmp_path / "empty" / "checkpoints" / "stage1").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="no trained selector"):
    system.HieraMAS.from_workdir(tmp_path / "empty")


def test_a_different_encoder_is_refused(trained):
  with pytest.raises(ValueError, match="trained on encoder"):
    system.HieraMAS.from_workdir(trained["workdir"], encoder=encoders.HashingEncoder(dim=64))


# ---------------------------------------------------------------------------
# Running on the simulated pool
# ---------------------------------------------------------------------------


def test_run_on_the_simulator_gives_answers_costs_and_traces(trained, tmp_path):
  hm = trained["system"]
  problems = test_problems(hm.config)
  trace = tmp_path / "trace.jsonl"
  results = hm.run(problems + list(TEXT_QUERIES), trace_path=trace)
  assert len(results) == len(problems) + len(TEXT_QUERIES)
  lines = [json.loads(line) for line in trace.read_text().splitlines()]
  assert len(lines) == sum(r.num_calls for r in results)
  for r in results[:len(problems)]:
    assert r.final_text is not None and not r.errors
    assert r.answer == hm.task.extract(r.final_text)
    assert r.correct == hm.task.grade(r.problem, r.final_text)
    assert r.cost_usd == pytest.approx(sum(c.cost for c in r.calls)) and r.cost_usd > 0
    assert r.prompt_tokens == sum(c.prompt_tokens for c in r.calls) > 0
    assert r.completion_tokens > 0 and r.num_calls == len(r.calls)
    # The calls are the plan's: every live role's positions and the decision node.
    live = [row for row in r.plan.assignment if row[-1] is not None]
    assert r.num_calls == sum(1 for row in live for m in row if m is not None) + 1
    latencies = [c.latency for c in r.calls]
    assert max(latencies) <= r.latency_s <= sum(latencies) and r.wall_s >= 0.0
    assert r.latency_s == pytest.approx(system.critical_path_s(r.calls, r.plan.adjacency))
    assert {c["query_uid"] for c in lines} >= {r.problem.uid}
  assert any(r.correct for r in results[:len(problems)])
  for r in results[len(problems):]:  # plain texts: answered, nothing to grade against
    assert r.final_text is not None and r.correct is None
  # Running the plans themselves gives the same answers (the response cache replays them).
  again = hm.run(hm.plan(problems))
  assert [r.final_text for r in again] == [r.final_text for r in results[:len(problems)]]
  with pytest.raises(TypeError, match="not a mix"):
    hm.run([again[0].plan, "a text"])
