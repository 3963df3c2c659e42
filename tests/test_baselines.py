"""Baseline methods: call shapes, costs, votes, who sees what, latency, failures, simulator compatibility."""

import asyncio
import dataclasses
import math
import re

import numpy as np
import pytest

from hieramas_jax import baselines, executor
from hieramas_jax.llm.base import Response, UnknownModelError, Usage, error_response
from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.llm.sim_task import ArithmeticTask

TASK = ArithmeticTask()
PROBLEMS = TASK.load("test", n=6)


class RecordingBackend:
  """Answers '<model/sample> \\boxed{answer}' and records every request.

  ``answer(model, messages, sample_index)`` gives the boxed value (default: the
  sample index); ``fail`` models return errors; ``latency`` per model.
  """

  def __init__(self, answer=None, fail=(), latency=None):
    self.requests = []
    self.answer = answer or (lambda model, messages, sample_index: sample_index)
    self.fail = set(fail)
    self.latency = latency or {}

  def known_models(self):
    return {"a", "b", "c", "bad"}

  async def complete(self, model, messages, *, sample_index=0, **params):
    n = len(self.requests)
    self.requests.append({"model": model, "messages": messages, "sample_index": sample_index, "params": params})
    await asyncio.sleep(0)
    if model in self.fail:
      return error_response(model, "HTTP 500: scripted failure", latency=self.latency.get(model, 0.0))
    value = self.answer(model, messages, sample_index)
    text = f"reply #{n} of {model}/{sample_index}: so \\boxed{{{value}}}"
    return Response(model=model, text=text, usage=Usage(10 + n % 3, 5), cost=0.001 * (1 + n % 7),
                    latency=self.latency.get(model, 1.0))


def _user(request):
  return request["messages"][-1]["content"]


def _chunks(text):
  """(header, body) of every [Name] chunk of a prompt."""
  parts = re.split(r"(?m)^\[([^\]\n]+)\]\n", text)
  return list(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("name,run,calls", [
    ("single", lambda b: baselines.run("single", PROBLEMS, b, TASK, model="a"), 1),
    ("cot", lambda b: baselines.run("cot", PROBLEMS, b, TASK, model="a"), 1),
    ("self_consistency", lambda b: baselines.run("self_consistency", PROBLEMS, b, TASK, model="a", samples=5), 5),
    ("debate", lambda b: baselines.run("debate", PROBLEMS, b, TASK, model="a", agents=3, rounds=3), 9),
    ("mixture", lambda b: baselines.run("mixture", PROBLEMS, b, TASK, model="a", proposers=4), 5),
    ("mlpo", lambda b: baselines.run("mlpo", PROBLEMS, b, TASK, leader_model="a", peers=3, rounds=2), 8),
    ("neuromas", lambda b: baselines.run("neuromas", PROBLEMS, b, TASK, model="a", depth=3, width=2), 7),
])
def test_call_counts_follow_the_shape_and_costs_add_up(name, run, calls):
  backend = RecordingBackend()
  outcomes = run(backend)
  assert [o.uid for o in outcomes] == [p.uid for p in PROBLEMS]
  assert all(o.num_calls == calls for o in outcomes), name
  assert len(backend.requests) == calls * len(PROBLEMS)
  # Each call is attributed to its own query: the query's question is in every prompt of its calls.
  for p, o in zip(PROBLEMS, outcomes):
    assert all(c.query_uid == p.uid for c in o.calls)
  asked = sum(1 for r in backend.requests for p in PROBLEMS if p.question in _user(r))
  assert asked == len(backend.requests)
  total = math.fsum(o.cost_usd for o in outcomes)
  # The recording backend's costs (0.001 * (1 + n % 7) for request n) summed independently.
  assert total == pytest.approx(math.fsum(0.001 * (1 + n % 7) for n in range(len(backend.requests))), rel=1e-12)
  assert sum(o.prompt_tokens for o in outcomes) == sum(10 + n % 3 for n in range(len(backend.requests)))
  assert sum(o.completion_tokens for o in outcomes) == 5 * len(backend.requests)
  assert all(not o.failed and not o.errors for o in outcomes)


def test_majority_vote():
  box = "work... \\boxed{{{}}}".format
  assert baselines.majority_vote(TASK, [box(3), box(4), box(4), box(3), box(4)]) == (1, {"3": 2, "4": 3})
  # A tie goes to the answer given first; texts without an answer and failed calls do not vote.
  assert baselines.majority_vote(TASK, [None, "no answer", box(7), box(8)]) == (2, {"7": 1, "8": 1})
  assert baselines.majority_vote(TASK, [None, "no answer", "none either"]) == (1, {})
  assert baselines.majority_vote(TASK, [None, None]) == (None, {})


def test_self_consistency_uses_distinct_samples_and_returns_the_majority():
  votes = {0: 12, 1: 5, 2: 12, 3: 5, 4: 12}  # sample index -> stated answer
  backend = RecordingBackend(answer=lambda m, msgs, s: votes[s])
  (outcome,) = baselines.run("self_consistency", PROBLEMS[:1], backend, TASK, model="a", samples=5)
  assert sorted(r["sample_index"] for r in backend.requests) == [0, 1, 2, 3, 4]
  assert len({_user(r) for r in backend.requests}) == 1  # same prompt, distinct samples
  assert TASK.extract(outcome.final_text) == "12"
  assert outcome.details["votes"] == {"12": 3, "5": 2}


def test_self_consistency_survives_failed_samples_and_fails_only_when_all_fail():
  class FailSome(RecordingBackend):
    async def complete(self, model, messages, *, sample_index=0, **params):
      if sample_index in (0, 1):  # the two '1' votes fail, so '2' must win
        self.requests.append({"sample_index": sample_index})
        return error_response(model, "timeout")
      return await super().complete(model, messages, sample_index=sample_index, **params)

  backend = FailSome(answer=lambda m, msgs, s: 1 if s < 2 else 2)
  (outcome,) = baselines.run("self_consistency", PROBLEMS[:1], backend, TASK, model="a", samples=3)
  assert TASK.extract(outcome.final_text) == "2" and len(outcome.errors) == 2
  assert outcome.failed  # the majority of the samples that answered: not the method's verdict, never graded
  (dead,) = baselines.run("self_consistency", PROBLEMS[:1], RecordingBackend(fail={"bad"}), TASK, model="bad",
                          samples=3)
  assert dead.failed and dead.final_text is None and len(dead.errors) == 3


def test_debate_agents_see_the_others_previous_answers():
  backend = RecordingBackend(answer=lambda m, msgs, s: 100 + s)
  (outcome,) = baselines.run("debate", PROBLEMS[:1], backend, TASK, model=["a", "b", "c"], agents=3, rounds=2)
  round0 = [r for r in backend.requests if r["sample_index"] < 1000]
  round1 = [r for r in backend.requests if r["sample_index"] >= 1000]
  assert len(round0) == 3 and len(round1) == 3
  assert [r["model"] for r in sorted(round0, key=lambda r: r["sample_index"])] == ["a", "b", "c"]
  assert all("[" not in _user(r) for r in round0)  # independent first answers
  answers0 = {r["sample_index"]: f"\\boxed{{{100 + r['sample_index']}}}" for r in round0}
  for r in round1:
    agent = r["sample_index"] - 1000
    chunks = dict(_chunks(_user(r)))
    others = {f"Agent {b + 1}" for b in range(3) if b != agent}
    assert set(chunks) == others | {"Your previous answer"}
    for b in range(3):
      if b != agent:
        assert answers0[b] in chunks[f"Agent {b + 1}"]
    assert answers0[agent] in chunks["Your previous answer"]
  # The three final answers differ (1000, 1001, 1002): the tie goes to agent 1's answer.
  assert TASK.extract(outcome.final_text) == "1100"


def test_mixture_mlpo_and_neuromas_pass_the_right_texts():
  backend = RecordingBackend()
  (mix,) = baselines.run("mixture", PROBLEMS[:1], backend, TASK, model="a", proposers=3, synthesizer_model="b")
  synth = [r for r in backend.requests if r["model"] == "b"]
  assert len(synth) == 1 and [h for h, _ in _chunks(_user(synth[0]))] == ["Candidate 1", "Candidate 2",
                                                                         "Candidate 3"]
  assert TASK.extract(mix.final_text) == "3"  # the synthesizer's sample index is its position, 3

  backend = RecordingBackend()
  (mlpo,) = baselines.run("mlpo", PROBLEMS[:1], backend, TASK, leader_model="b", peer_models="a", peers=2,
                          rounds=3)
  leaders = [r for r in backend.requests if r["model"] == "b"]
  peers = [r for r in backend.requests if r["model"] == "a"]
  assert len(leaders) == 3 and len(peers) == 6
  # Peers of rounds 2 and 3 see the leader's previous output and their own answer.
  for r in peers:
    heads = [h for h, _ in _chunks(_user(r))]
    assert heads == ([] if r["sample_index"] < 1000 else ["Leader", "Your previous answer"])
  for r in leaders:
    assert [h for h, _ in _chunks(_user(r))] == ["Peer 1", "Peer 2"]
  # The final answer is the leader's last output (round 3: sample index 2 * 1000 + 2).
  assert TASK.extract(mlpo.final_text) == "2002"

  backend = RecordingBackend()
  (neuro,) = baselines.run("neuromas", PROBLEMS[:1], backend, TASK, model="a", depth=2, width=3,
                           aggregator_model="c")
  layer2 = [r for r in backend.requests if 1000 <= r["sample_index"] < 2000]
  assert len(layer2) == 3
  for r in layer2:
    assert [h for h, _ in _chunks(_user(r))] == ["Node 1.1", "Node 1.2", "Node 1.3"]
  (agg,) = [r for r in backend.requests if r["model"] == "c"]
  assert [h for h, _ in _chunks(_user(agg))] == ["Node 2.1", "Node 2.2", "Node 2.3"]
  assert TASK.extract(neuro.final_text) == "2000"


def test_latency_is_the_critical_path_of_reported_latencies():
  backend = RecordingBackend(latency={"a": 1.0, "b": 2.5, "c": 0.5})
  (deb,) = baselines.run("debate", PROBLEMS[:1], backend, TASK, model=["a", "b", "c"], agents=3, rounds=2)
  assert deb.latency_s == pytest.approx(5.0)  # each round waits for the slowest agent
  (mix,) = baselines.run("mixture", PROBLEMS[:1], backend, TASK, model="a", proposers=2, synthesizer_model="c")
  assert mix.latency_s == pytest.approx(1.5)
  (mlpo,) = baselines.run("mlpo", PROBLEMS[:1], backend, TASK, leader_model="c", peer_models=["a", "b"], peers=2,
                          rounds=2)
  assert mlpo.latency_s == pytest.approx(2 * (2.5 + 0.5))
  (neuro,) = baselines.run("neuromas", PROBLEMS[:1], backend, TASK, model=["a", "c"], depth=2, width=2,
                                    aggregator_model="b")
  assert neuro.latency_s == pytest.approx(1.0 + 1.0 + 2.5)


def test_failures_leave_queries_ungradable_not_wrong():
  backend = RecordingBackend(fail={"bad"})
  (single,) = baselines.run("single", PROBLEMS[:1], backend, TASK, model="bad")
  assert single.failed and single.errors and single.num_calls == 1
  (mix,) = baselines.run("mixture", PROBLEMS[:1], backend, TASK, model="bad", proposers=2, synthesizer_model="a")
  # The synthesizer answers alone: a text, but not the method's answer, so an error record.
  assert mix.failed and mix.final_text is not None and len(mix.errors) == 2
  (mlpo,) = baselines.run("mlpo", PROBLEMS[:1], backend, TASK, leader_model="bad", peer_models="a", peers=2,
                          rounds=2)
  assert mlpo.failed  # the leader's last output is the answer, and it failed
  with pytest.raises(UnknownModelError, match="nope"):
    baselines.run("single", PROBLEMS[:1], backend, TASK, model="nope")
  with pytest.raises(ValueError, match=r"agents=0 \(--debate_agents\); it must be >= 1"):
    baselines.run("debate", PROBLEMS[:1], backend, TASK, model="a", agents=0)


def test_run_takes_each_methods_typed_settings_and_nothing_else():
  backend = RecordingBackend()
  with pytest.raises(ValueError, match=r"no setting\(s\) \['samples'\]; its settings are \['model', 'agents'"):
    baselines.run("debate", PROBLEMS[:1], backend, TASK, model="a", samples=3)
  with pytest.raises(ValueError, match="chain_of_thought"):  # fixed by the cot entry
    baselines.run("cot", PROBLEMS[:1], backend, TASK, model="a", chain_of_thought=False)
  with pytest.raises(KeyError, match="unknown method 'gpt'"):
    baselines.run("gpt", PROBLEMS[:1], backend, TASK)
  with pytest.raises(ValueError, match="uses a trained HieraMAS"):
    baselines.run("hieramas_no_classifier", PROBLEMS[:1], backend, TASK)
  assert backend.requests == []
  # Settings are frozen dataclasses; a method is one function of (context, settings).
  settings = baselines.SelfConsistencySettings(model="a", samples=2)
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.samples = 3
  ctx = baselines.MethodContext(problems=PROBLEMS[:2], backend=backend, task=TASK)
  assert [o.num_calls for o in baselines.self_consistency(ctx, settings)] == [2, 2]


def test_the_papers_full_graph_runs_without_training():
  backend = RecordingBackend()
  outcomes = baselines.run("full_graph", PROBLEMS[:2], backend, TASK, model="b", num_proposers=2)
  roles = len(TASK.roles)
  assert [o.num_calls for o in outcomes] == [roles + 1] * 2  # one call per role and the decision node
  assert {r["model"] for r in backend.requests} == {"b"}
  (one,) = baselines.run("random_graph", PROBLEMS[:1], backend, TASK, model="a", seed=3, density=(0.3, 0.7))
  assert one.num_calls == roles + 1 and not one.failed


def test_an_executed_plan_carries_its_critical_path_and_plan():
  backend = RecordingBackend(latency={"a": 1.0, "b": 2.0, "c": 4.0})
  roles = TASK.roles
  # Role 0 -> role 1; role 2 is independent; role 1 has one proposer b and synthesizer a.
  plan = executor.Plan(PROBLEMS[0], roles, [["a", "a", "a"], [None, "b", "a"], ["c", None, "a"]],
                       [[0, 1, 0], [0, 0, 0], [0, 0, 0]], "b")
  (result,) = executor.execute([plan], backend, TASK)
  # Role 0: 1 + 1 = 2; role 1: 2 + (2 + 1) = 5; role 2: 4 + 1 = 5; decision + 2 = 7.
  assert result.latency_s == pytest.approx(7.0) and result.plan is plan
  assert result.num_calls == len(result.calls) == 8 and result.uid == PROBLEMS[0].uid
  assert result.cost_usd == pytest.approx(sum(c.cost for c in result.calls))
  # Role 1 dropped: role 2 no longer waits on the chain through it.
  dropped = executor.Plan(PROBLEMS[0], roles, [["a", "a", "c"], [None, None, None], [None, None, "a"]],
                          [[0, 1, 0], [0, 0, 1], [0, 0, 0]], "b")
  (result,) = executor.execute([dropped], backend, TASK)
  assert result.latency_s == pytest.approx(max(1.0 + 4.0, 1.0) + 2.0) and result.role_outputs[1] is None


def test_simulator_reads_every_candidate_in_baseline_prompts():
  world = default_world(seed=0)
  problems = TASK.load("test", n=30)
  sim = SimulatedBackend(world, TASK, problems)
  p = problems[0]
  right = TASK.render_answer(p, True, __import__("random").Random(0))
  wrong = TASK.render_answer(p, False, __import__("random").Random(1))
  cases = [
      baselines.synthesis_messages(TASK, p, [("Candidate 1", right), ("Candidate 2", wrong), ("Candidate 3", right)]),
      baselines.debate_messages(TASK, p, right, [("Agent 2", wrong), ("Agent 3", right)]),
      baselines.refine_messages(TASK, p, wrong, right),
      baselines.layer_messages(TASK, p, [("Node 1.1", right), ("Node 1.2", wrong), ("Node 1.3", wrong)]),
  ]
  expected = [(2, 1), (2, 1), (1, 1), (1, 2)]
  for messages, (n_right, n_wrong) in zip(cases, expected):
    reading = sim.read(messages)
    assert reading is not None and reading.problem.uid == p.uid
    assert (reading.n_correct, reading.n_wrong) == (n_right, n_wrong)
  for build in (baselines.plain_messages, baselines.cot_messages):
    reading = sim.read(build(TASK, p))
    assert (reading.n_correct, reading.n_wrong) == (0, 0)


def test_on_the_simulator_collaboration_beats_a_single_call():
  problems = TASK.load("test", n=120)
  sim = SimulatedBackend(default_world(seed=0), TASK, problems)

  def accuracy(outcomes):
    return np.mean([o.final_text is not None and TASK.grade(p, o.final_text) for p, o in zip(problems, outcomes)])

  single = accuracy(baselines.run("single", problems, sim, TASK, model="GPT-4o-mini"))
  voted = accuracy(baselines.run("self_consistency", problems, sim, TASK, model="GPT-4o-mini", samples=5))
  mixed = accuracy(baselines.run("mixture", problems, sim, TASK, model="GPT-4o-mini", proposers=3))
  assert voted > single + 0.1 and mixed > single + 0.05, (single, voted, mixed)


def test_calls_record_finish_reason_and_queries_count_truncated_replies():
  class Cutting(RecordingBackend):
    async def complete(self, model, messages, *, sample_index=0, **params):
      response = await super().complete(model, messages, sample_index=sample_index, **params)
      return dataclasses.replace(response, finish_reason="length" if sample_index == 1 else "stop")

  (outcome,) = baselines.run("self_consistency", PROBLEMS[:1], Cutting(), TASK, model="a", samples=3)
  assert sorted(c.finish_reason for c in outcome.calls) == ["length", "stop", "stop"]
  assert outcome.truncated == 1 and not outcome.failed
