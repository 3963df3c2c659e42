"""HieraMASPolicy: the spec as JSON, save/load, act/score, old and future checkpoint schemas, and the user API."""

import asyncio
import json

import jax
import numpy as np
import pytest

from hieramas_jax import checkpointing, config as base_config, encoders, executor, graphs, policy, system
from hieramas_jax.models import selector as sel
from hieramas_jax.train import environment

QUERIES = ["What is 17 + 25?", "A square has side 3. What is its area?", "What is 2 * 9?"]


def small_config():
  c = base_config.base_config("math", "smoke")
  c.encoder.kind = "hashing"
  return c


def fresh_policy(config, **kwargs) -> policy.HieraMASPolicy:
  encoder = encoders.HashingEncoder()
  spec = policy.PolicySpec.from_config(config, environment.load_task(config).roles, environment.pool_specs(config),
                                       encoder.encoder_id, encoder.dim)
  return policy.HieraMASPolicy.init(spec, encoder.encode(list(spec.option_texts)), **kwargs)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("policy")
  config = small_config()
  trained = fresh_policy(config)
  trained.save(workdir, config=config, step=3)
  return {"workdir": workdir, "config": config, "policy": trained}


def _embeddings(p: policy.HieraMASPolicy, batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  s = p.spec
  return (rng.normal(size=(batch, len(s.roles), s.embedding_dim)).astype(np.float32),
          rng.normal(size=(batch, s.embedding_dim)).astype(np.float32))


def test_spec_is_json_and_comes_back_equal(saved):
  spec = saved["policy"].spec
  again = policy.PolicySpec.from_json(json.loads(json.dumps(spec.to_json())))
  assert again == spec
  assert spec.roles == ("Mathematical Analyst", "Math Solver", "Inspector") and spec.classifier_model == "gcn"
  assert len(spec.option_texts) == len(spec.model_names) + 1


def test_the_spec_of_a_config_holds_the_option_texts_training_embedded(tmp_path):
  config = small_config()
  env = environment.build_environment(config, tmp_path / "run")
  try:
    spec = policy.PolicySpec.from_environment(env)
    assert spec.option_texts == environment.option_texts(env.specs)
    assert spec.option_texts[-1] == environment.SKIP_PROFILE and spec.model_names == tuple(env.model_names)
    encoder = environment.make_text_encoder(config, tmp_path / "run")
    np.testing.assert_array_equal(encoder.encode(list(spec.option_texts)), env.option_emb)
  finally:
    env.close()
  with pytest.raises(policy.PolicyLoadError, match="unknown"):
    policy.PolicySpec.from_json({**spec.to_json(), "extra": 1})


def test_load_gives_back_the_saved_policy_and_decides_the_same(saved):
  mine = saved["policy"]
  loaded = policy.HieraMASPolicy.load(saved["workdir"])  # schema 2: no encoder, config or task needed
  assert loaded.spec == mine.spec and loaded.has_classifier
  np.testing.assert_array_equal(np.asarray(loaded.option_emb), np.asarray(mine.option_emb))
  qr, q = _embeddings(mine, 5)
  np.testing.assert_array_equal(loaded.logits(qr), mine.logits(qr))
  greedy = loaded.act(qr)
  np.testing.assert_array_equal(greedy, np.asarray(sel.argmax(mine.logits(qr), loaded.selection_mask(5))))
  pool = loaded.candidate_pool()
  c = mine.spec.candidate_pool
  np.testing.assert_array_equal(pool, graphs.dag_pool(c["seed"], 3, c["size"], tuple(c["density_range"]),
                                                      allow_fewer=True))
  np.testing.assert_array_equal(loaded.score(q, pool), mine.score(q, pool))
  assert loaded.score(q, pool).shape == (5, len(pool))


def test_act_samples_valid_options_given_a_key(saved):
  p = saved["policy"].with_inference_rules(max_skipped_roles=1)
  qr, _ = _embeddings(p, 64)
  valid = p.selection_mask(64)
  key = jax.random.key(0)
  drawn = p.act(qr, key, temperature=5.0)
  np.testing.assert_array_equal(drawn, p.act(qr, key, temperature=5.0))  # the key decides
  assert not np.array_equal(drawn, p.act(qr, jax.random.key(1), temperature=5.0))
  assert not np.array_equal(drawn, p.act(qr))  # a sample, not the argmax
  assert np.take_along_axis(valid, drawn[..., None], -1).all()
  with pytest.raises(ValueError, match="temperature"):
    p.act(qr, key, temperature=0.0)
  with pytest.raises(ValueError, match="query_ids"):
    p.with_inference_rules(rotate_top_n=2).act(qr)
  with pytest.raises(ValueError, match=r"expected \[B, 3, 256\]"):
    p.act(qr[:, :2])


def _legacy_checkpoint(workdir, config, trained: policy.HieraMASPolicy, *, schema=None) -> None:
  """A stage-1 checkpoint as hieramas_jax wrote it before the policy (schema 1), or claiming ``schema``."""
  params = trained.selector[1]
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), policy.optimizer_template(params))
  state = {"params": params, "opt_state": zeros,
           "baseline": np.zeros(3, np.float32), "best_params": params, "best_val": np.float32(0.1)}
  meta = {"stage": 1, "step": 2, "config": config.to_dict(), "history": [], "encoder_id": trained.spec.encoder_id,
          "model_names": list(trained.spec.model_names), "roles": list(trained.spec.roles),
          "versions": {"hieramas_jax": "0.0.9"}}
  if schema is not None:
    meta["policy_schema"] = schema
  with checkpointing.Checkpointer(workdir / "checkpoints" / "stage1") as ck:
    ck.save(2, state, meta, force=True)


def test_a_schema_1_workdir_loads_and_a_future_one_fails_in_one_line(saved, tmp_path):
  config, trained = saved["config"], saved["policy"]
  _legacy_checkpoint(tmp_path / "old", config, trained)
  with pytest.raises(policy.PolicyLoadError, match=r"written by hieramas_jax 0\.0\.9 \(policy schema 1\)"):
    policy.HieraMASPolicy.load(tmp_path / "old")  # its option embeddings must be computed again: needs the encoder
  with system.HieraMAS.from_workdir(tmp_path / "old") as hm:
    assert hm.policy.spec == trained.spec.replace(inference=hm.policy.spec.inference)
    np.testing.assert_array_equal(np.asarray(hm.policy.option_emb), np.asarray(trained.option_emb))
    qr, _ = _embeddings(trained, 4)
    np.testing.assert_array_equal(hm.policy.logits(qr), trained.logits(qr))
    assert not hm.has_classifier and "no stage-2 checkpoint" in hm.graph_choice_reason
  _legacy_checkpoint(tmp_path / "future", config, trained, schema=99)
  with pytest.raises(policy.PolicyLoadError) as info:
    system.HieraMAS.from_workdir(tmp_path / "future")
  message = str(info.value)
  assert "\n" not in message and "hieramas_jax 0.0.9 (policy schema 99)" in message and "schemas 1-2" in message


def _call(role_index, kind, latency):
  return executor.CallRecord(query_uid="q", query_index=0, role="r", role_index=role_index, kind=kind, position=0,
                             model="m", prompt_tokens=1, completion_tokens=1, cost=0.0, start=0.0, end=latency,
                             latency=latency, error=None, cached=False, attempts=1)


def test_critical_path_is_the_longest_chain_of_latencies_along_the_dag():
  adjacency = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]])  # role 0 feeds role 1; role 2 runs alongside
  calls = [_call(0, "proposer", 1.0), _call(0, "proposer", 3.0), _call(0, "synthesizer", 2.0),
           _call(1, "synthesizer", 4.0), _call(2, "proposer", 6.0), _call(2, "synthesizer", 2.5),
           _call(-1, "decision", 0.5)]
  assert system.critical_path_s(calls, adjacency) == pytest.approx(max(3 + 2 + 4, 6 + 2.5) + 0.5)
  assert system.critical_path_s([_call(-1, "decision", 0.7)], adjacency) == pytest.approx(0.7)
  # Chain 0 -> 1 -> 2 with role 1 dropped (no calls): the executor cuts it out, so role 2 does not wait for role 0.
  chain = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
  calls = [_call(0, "synthesizer", 5.0), _call(2, "synthesizer", 1.0), _call(-1, "decision", 0.5)]
  assert system.critical_path_s(calls, chain) == pytest.approx(5.0 + 0.5)


def test_overrides_single_queries_sampling_and_the_async_api(saved):
  overrides = {"llm.max_concurrency": 3, "inference.max_skipped_roles": 0,
               "llm.models": [{"name": "Qwen3-8B", "price_in_per_m": 9.0}]}
  hm = system.HieraMAS.from_workdir(saved["workdir"], overrides=overrides)
  try:
    assert hm.config.llm.max_concurrency == 3 and hm.policy.spec.inference["max_skipped_roles"] == 0
    assert {s.name: s.price_in_per_m for s in environment.pool_specs(hm.config)}["Qwen3-8B"] == 9.0
    assert hm.model_names == list(saved["policy"].spec.model_names)  # the other models keep their fields
    one = hm.plan(QUERIES[0])
    assert isinstance(one, system.Plan) and all(row[-1] is not None for row in one.assignment)
    batch = hm.plan(QUERIES, query_emb=hm.query_embeddings(QUERIES),
                    query_role_emb=hm.query_role_embeddings(QUERIES))
    assert [p.assignment for p in batch] == [p.assignment for p in hm.plan(QUERIES)]
    sampled = hm.plan(QUERIES * 8, key=jax.random.key(3), temperature=10.0)
    assert len({json.dumps(p.assignment) for p in sampled}) > 1
    result = hm.run(QUERIES[0])
    assert isinstance(result, system.QueryResult) and result.final_text and result.latency_s > 0

    async def inside_a_loop():
      blocking = hm.run(QUERIES[1])  # works in a running loop (on the worker thread)
      planned = await hm.aplan(QUERIES)
      ran = await hm.arun(planned)
      return blocking, ran

    blocking, ran = asyncio.run(inside_a_loop())
    assert blocking.final_text and [r.problem.question for r in ran] == QUERIES
    assert ran[1].final_text == blocking.final_text  # the response cache replays the same call
  finally:
    hm.close()
  assert hm._worker is None and hm._backend is None  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="no such field"):
    system.HieraMAS.from_workdir(saved["workdir"], overrides={"llm.no_such": 1})
