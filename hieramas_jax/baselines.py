"""Baseline multi-agent methods over an LLM backend (host-side asyncio; no JAX).

Every method answers a batch of problems with the same backend and task as
HieraMAS and returns one :class:`QueryOutcome` per problem: the final text (to
be graded by the task's grader), every call made (``executor.CallRecord``), the
errors, and the query's latency.

Methods (shapes in calls per query):

* ``run_single``: one call on a plain prompt (``chain_of_thought=True``: asking to
  reason step by step). 1 call.
* ``run_self_consistency``: ``samples`` independent calls (distinct sample
  indices), majority over the extracted answers. ``samples`` calls.
* ``run_debate``: ``agents`` answer, then for ``rounds - 1`` more rounds each
  agent reads the other agents' previous answers and its own and answers again;
  majority over the last answers. ``agents * rounds`` calls.
* ``run_mixture``: one propose-and-synthesize layer: ``proposers`` calls of one
  model, one synthesizer reads them. ``proposers + 1`` calls.
* ``run_mlpo``: MLPO-style: ``peers`` untrained peers answer, a leader
  synthesizes; for ``rounds - 1`` more rounds the peers refine on the leader's
  output and the leader synthesizes again; the leader's last output is final.
  ``rounds * (peers + 1)`` calls.
* ``run_neuromas``: NeuroMAS-style layered role-free network: ``depth`` layers of
  ``width`` plain LLM nodes, each node reads all outputs of the previous layer,
  one final node aggregates the last layer. ``depth * width + 1`` calls.
* ``single_call_role_plans``: the paper's Full-Graph and Random-Graph baselines as
  executor plans: one model fills every role as a single call (no proposers) and
  the decision node, on a given DAG of the roles. ``roles + 1`` calls.

Prompts quote candidate texts in ``[Name]``-headed chunks after the problem, the
format of the task's own prompts (the simulated pool reads candidates there).

Latency of a query is its critical path: calls start as soon as their inputs
exist and take the latency the backend reports for them (``Response.latency``),
so it is the time from the first call's start to the last call's end without the
queueing that a whole batch sent at once adds. ``plan_critical_path`` gives the
same measure for HieraMAS plans run by the executor.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np

from hieramas_jax import executor
from hieramas_jax.executor import CallRecord, Plan, QueryResult
from hieramas_jax.llm.base import Backend, Message, Response, check_models
from hieramas_jax.tasks.base import Problem, Task

# Sample indices: call c of round r uses r * _ROUND_STRIDE + c, so calls that
# share a prompt and model (parallel agents of round 0) get distinct samples.
_ROUND_STRIDE = 1000

SYSTEM_PROMPT = "You are a careful expert problem solver."


@dataclasses.dataclass
class QueryOutcome:
  """One problem answered by one method.

  Attributes:
    uid: the problem's uid.
    final_text: the method's final answer text; None when it could give none
      (its last call failed).
    calls: every LLM call made for this query.
    latency_s: critical path in seconds (see the module docstring).
    errors: one line per failed call; any makes the query ``failed``: not
      gradable, never "wrong" (a failed sample changes a majority, a failed
      proposer what the synthesizer reads).
    details: method-specific facts (e.g. the votes of a majority).
  """

  uid: str
  final_text: str | None
  calls: list[CallRecord]
  latency_s: float
  errors: list[str] = dataclasses.field(default_factory=list)
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def failed(self) -> bool:
    """Any call failed, or no final answer: an error record, excluded from accuracy."""
    return bool(self.errors) or self.final_text is None

  @property
  def truncated(self) -> int:
    """Replies of this query cut at max_tokens (finish_reason 'length')."""
    return sum(c.truncated for c in self.calls)

  @property
  def cost(self) -> float:
    return math.fsum(c.cost for c in self.calls)

  @property
  def prompt_tokens(self) -> int:
    return sum(c.prompt_tokens for c in self.calls)

  @property
  def completion_tokens(self) -> int:
    return sum(c.completion_tokens for c in self.calls)

  @property
  def num_calls(self) -> int:
    return len(self.calls)


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------


def _chunks(items: Sequence[tuple[str, str]]) -> list[str]:
  return [f"[{name}]\n{text}" for name, text in items]


def _messages(parts: Sequence[str]) -> list[Message]:
  return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def plain_messages(task: Task, problem: Problem) -> list[Message]:
  """The problem and the task's answer instruction, nothing else."""
  return _messages([f"Problem:\n{problem.question}", task.answer_instruction])


def cot_messages(task: Task, problem: Problem) -> list[Message]:
  """Chain of thought: the problem, a request to reason step by step, the answer instruction."""
  return _messages([f"Problem:\n{problem.question}",
                    "Let's think step by step: work through the problem carefully, checking each step, "
                    "before stating the result.", task.answer_instruction])


def debate_messages(task: Task, problem: Problem, own_previous: str | None,
                    others: Sequence[tuple[str, str]]) -> list[Message]:
  """A debate round after the first: the other agents' previous answers and this agent's own."""
  parts = [f"Problem:\n{problem.question}"]
  if others:
    parts.append("These are the answers of the other agents from the previous round:")
    parts.extend(_chunks(others))
  if own_previous is not None:
    parts.append("This was your own previous answer:")
    parts.extend(_chunks([("Your previous answer", own_previous)]))
  parts.append("Use the other agents' reasoning as additional evidence, re-examine the problem and give an "
               "updated answer.")
  parts.append(task.answer_instruction)
  return _messages(parts)


def synthesis_messages(task: Task, problem: Problem, candidates: Sequence[tuple[str, str]]) -> list[Message]:
  """A synthesizer / leader / aggregator: reads the candidates and writes the best single answer."""
  parts = [f"Problem:\n{problem.question}"]
  if candidates:
    parts.append("Responses to synthesize:")
    parts.extend(_chunks(candidates))
    parts.append("Critically judge these responses (some may be wrong), keep what is right, and write the best "
                 "single response.")
  parts.append(task.answer_instruction)
  return _messages(parts)


def refine_messages(task: Task, problem: Problem, own_previous: str | None, leader: str | None) -> list[Message]:
  """An MLPO peer after the first round: refines its answer on the leader's output."""
  parts = [f"Problem:\n{problem.question}"]
  if leader is not None:
    parts.append("The team leader's current answer:")
    parts.extend(_chunks([("Leader", leader)]))
  if own_previous is not None:
    parts.append("Your previous answer:")
    parts.extend(_chunks([("Your previous answer", own_previous)]))
  parts.append("Reconsider the problem in the light of the leader's answer and give your refined answer.")
  parts.append(task.answer_instruction)
  return _messages(parts)


def layer_messages(task: Task, problem: Problem, previous_layer: Sequence[tuple[str, str]]) -> list[Message]:
  """A NeuroMAS node: reads every output of the previous layer (none in the first layer)."""
  if not previous_layer:
    return plain_messages(task, problem)
  parts = [f"Problem:\n{problem.question}", "Outputs of the previous layer:", *_chunks(previous_layer),
           "Use these outputs as input and write your own answer."]
  parts.append(task.answer_instruction)
  return _messages(parts)


# ---------------------------------------------------------------------------
# Majority vote
# ---------------------------------------------------------------------------


def majority_vote(task: Task, texts: Sequence[str | None]) -> tuple[int | None, dict[str, int]]:
  """Index of a text that states the most frequent answer, and the votes per answer.

  Answers are the task's ``extract`` of each text, compared as strings; a tie
  goes to the answer given first. Texts without an answer do not vote; when none
  has one, the first text is returned (it will be graded as it is). None when
  every text is None.
  """
  answers = [task.extract(t) if t is not None else None for t in texts]
  votes: dict[str, int] = collections.Counter(a for a in answers if a is not None)
  if votes:
    first = {a: answers.index(a) for a in votes}
    best = max(votes, key=lambda a: (votes[a], -first[a]))
    return first[best], dict(votes)
  for i, t in enumerate(texts):
    if t is not None:
      return i, {}
  return None, {}


# ---------------------------------------------------------------------------
# Running queries
# ---------------------------------------------------------------------------


class _Query:
  """The calls of one query: records them and keeps the virtual schedule for its critical path."""

  def __init__(self, index: int, problem: Problem, backend: Backend, params: Mapping[str, Any], t0: float):
    self.index = index
    self.problem = problem
    self.backend = backend
    self.params = params
    self.t0 = t0
    self.calls: list[CallRecord] = []
    self.errors: list[str] = []
    self.finish = 0.0  # virtual end of the latest call

  async def call(self, node: str, node_index: int, kind: str, position: int, model: str,
                 messages: Sequence[Message], sample_index: int, ready: float) -> tuple[Response, float]:
    """One call that may start at virtual time ``ready``; returns the response and its virtual end."""
    start = time.perf_counter() - self.t0
    response = await self.backend.complete(model, messages, sample_index=sample_index, **self.params)
    end = time.perf_counter() - self.t0
    self.calls.append(CallRecord(
        query_uid=self.problem.uid, query_index=self.index, role=node, role_index=node_index, kind=kind,
        position=position, model=model, prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens, cost=response.cost, start=start, end=end,
        latency=response.latency, error=response.error, cached=response.cached, attempts=response.attempts,
        finish_reason=response.finish_reason))
    if not response.ok:
      self.errors.append(f"{node} ({model}): {response.error or 'no text'}")
    virtual_end = ready + max(0.0, float(response.latency))
    self.finish = max(self.finish, virtual_end)
    return response, virtual_end

  def outcome(self, final_text: str | None, **details: Any) -> QueryOutcome:
    self.calls.sort(key=lambda c: (c.start, c.end))
    return QueryOutcome(uid=self.problem.uid, final_text=final_text, calls=self.calls, latency_s=self.finish,
                        errors=self.errors, details=details)


QueryFn = Callable[[_Query], Awaitable[QueryOutcome]]


async def _run_all(problems: Sequence[Problem], backend: Backend, models: Sequence[str],
                   params: Mapping[str, Any] | None, query_fn: QueryFn) -> list[QueryOutcome]:
  check_models(backend, models)
  params = dict(params or {})
  t0 = time.perf_counter()
  return list(await asyncio.gather(*(query_fn(_Query(i, p, backend, params, t0)) for i, p in enumerate(problems))))


def _positive(**values: int) -> None:
  for name, value in values.items():
    if int(value) < 1:
      raise ValueError(f"{name}={value}; it must be >= 1")


def _text(response: Response) -> str | None:
  return response.text if response.ok else None


# ---------------------------------------------------------------------------
# Methods (async)
# ---------------------------------------------------------------------------


async def single_async(problems: Sequence[Problem], backend: Backend, task: Task, model: str, *,
                       chain_of_thought: bool = False,
                       params: Mapping[str, Any] | None = None) -> list[QueryOutcome]:
  kind = "cot" if chain_of_thought else "single"
  build = cot_messages if chain_of_thought else plain_messages

  async def one(q: _Query) -> QueryOutcome:
    response, _ = await q.call("LLM", 0, kind, 0, model, build(task, q.problem), 0, 0.0)
    return q.outcome(_text(response))

  return await _run_all(problems, backend, [model], params, one)


async def self_consistency_async(problems: Sequence[Problem], backend: Backend, task: Task, model: str, *,
                                 samples: int = 5, params: Mapping[str, Any] | None = None) -> list[QueryOutcome]:
  _positive(samples=samples)

  async def one(q: _Query) -> QueryOutcome:
    messages = plain_messages(task, q.problem)
    answers = await asyncio.gather(*(q.call(f"Sample {s + 1}", s, "sample", s, model, messages, s, 0.0)
                                     for s in range(samples)))
    texts = [_text(r) for r, _ in answers]
    chosen, votes = majority_vote(task, texts)
    return q.outcome(None if chosen is None else texts[chosen], votes=votes)

  return await _run_all(problems, backend, [model], params, one)


async def debate_async(problems: Sequence[Problem], backend: Backend, task: Task, models: str | Sequence[str], *,
                       agents: int = 3, rounds: int = 2,
                       params: Mapping[str, Any] | None = None) -> list[QueryOutcome]:
  """``models``: one model for every agent, or one per agent (cycled)."""
  _positive(agents=agents, rounds=rounds)
  names = [models] if isinstance(models, str) else list(models)
  agent_models = [names[a % len(names)] for a in range(agents)]

  async def one(q: _Query) -> QueryOutcome:
    current: list[str | None] = [None] * agents  # each agent's latest answer (kept when a call fails)
    ready = 0.0
    for r in range(rounds):
      calls = []
      for a in range(agents):
        if r == 0:
          messages = plain_messages(task, q.problem)
        else:
          others = [(f"Agent {b + 1}", current[b]) for b in range(agents) if b != a and current[b] is not None]
          messages = debate_messages(task, q.problem, current[a], others)
        calls.append(q.call(f"Agent {a + 1}", a, "debate", r, agent_models[a], messages,
                            r * _ROUND_STRIDE + a, ready))
      answers = await asyncio.gather(*calls)
      # Every agent of the next round waits for all answers of this one.
      ready = max(end for _, end in answers)
      for a, (response, _) in enumerate(answers):
        if response.ok:
          current[a] = response.text
    chosen, votes = majority_vote(task, current)
    return q.outcome(None if chosen is None else current[chosen], votes=votes)

  return await _run_all(problems, backend, agent_models, params, one)


async def mixture_async(problems: Sequence[Problem], backend: Backend, task: Task, model: str, *,
                        proposers: int = 3, synthesizer_model: str | None = None,
                        params: Mapping[str, Any] | None = None) -> list[QueryOutcome]:
  _positive(proposers=proposers)
  synthesizer_model = synthesizer_model or model

  async def one(q: _Query) -> QueryOutcome:
    messages = plain_messages(task, q.problem)
    answers = await asyncio.gather(*(q.call(f"Proposer {p + 1}", p, "proposer", p, model, messages, p, 0.0)
                                     for p in range(proposers)))
    proposals = [(f"Candidate {i + 1}", r.text) for i, (r, _) in enumerate(answers) if r.ok]
    ready = max(end for _, end in answers)
    response, _ = await q.call("Synthesizer", proposers, "synthesizer", proposers, synthesizer_model,
                               synthesis_messages(task, q.problem, proposals), proposers, ready)
    return q.outcome(_text(response))

  return await _run_all(problems, backend, [model, synthesizer_model], params, one)


async def mlpo_async(problems: Sequence[Problem], backend: Backend, task: Task, leader_model: str,
                     peer_models: str | Sequence[str] | None = None, *, peers: int = 3, rounds: int = 2,
                     params: Mapping[str, Any] | None = None) -> list[QueryOutcome]:
  """MLPO-style leader and peers; ``peer_models`` (default: the leader's) are cycled over the peers."""
  _positive(peers=peers, rounds=rounds)
  names = [leader_model] if peer_models is None else ([peer_models] if isinstance(peer_models, str)
                                                       else list(peer_models))
  models = [names[k % len(names)] for k in range(peers)]

  async def one(q: _Query) -> QueryOutcome:
    own: list[str | None] = [None] * peers
    leader: str | None = None
    ready = 0.0
    final: str | None = None
    for r in range(rounds):
      calls = []
      for k in range(peers):
        messages = (plain_messages(task, q.problem) if r == 0 else
                    refine_messages(task, q.problem, own[k], leader))
        calls.append(q.call(f"Peer {k + 1}", k, "peer", r, models[k], messages, r * _ROUND_STRIDE + k, ready))
      answers = await asyncio.gather(*calls)
      for k, (response, _) in enumerate(answers):
        if response.ok:
          own[k] = response.text
      ready = max(end for _, end in answers)
      candidates = [(f"Peer {k + 1}", own[k]) for k in range(peers) if own[k] is not None]
      response, ready = await q.call("Leader", peers, "leader", r, leader_model,
                                     synthesis_messages(task, q.problem, candidates),
                                     r * _ROUND_STRIDE + peers, ready)
      final = _text(response)  # the leader's output of the last round is final, even when it failed
      if response.ok:
        leader = response.text
    return q.outcome(final)

  return await _run_all(problems, backend, [leader_model, *models], params, one)


async def neuromas_async(problems: Sequence[Problem], backend: Backend, task: Task, models: str | Sequence[str], *,
                         depth: int = 2, width: int = 3, aggregator_model: str | None = None,
                         params: Mapping[str, Any] | None = None) -> list[QueryOutcome]:
  """``models``: one model for every node, or one per position in a layer (cycled)."""
  _positive(depth=depth, width=width)
  names = [models] if isinstance(models, str) else list(models)
  node_models = [names[w % len(names)] for w in range(width)]
  aggregator_model = aggregator_model or node_models[0]

  async def one(q: _Query) -> QueryOutcome:
    previous: list[tuple[str, str]] = []
    ready = 0.0
    for layer in range(depth):
      messages = layer_messages(task, q.problem, previous)
      answers = await asyncio.gather(*(
          q.call(f"Node {layer + 1}.{w + 1}", layer * width + w, "node", layer, node_models[w], messages,
                 layer * _ROUND_STRIDE + w, ready) for w in range(width)))
      ready = max(end for _, end in answers)
      outputs = [(f"Node {layer + 1}.{w + 1}", r.text) for w, (r, _) in enumerate(answers) if r.ok]
      # A layer whose every node failed passes on what the layer before it said.
      previous = outputs or previous
    response, _ = await q.call("Aggregator", depth * width, "aggregator", depth, aggregator_model,
                               synthesis_messages(task, q.problem, previous), depth * _ROUND_STRIDE, ready)
    return q.outcome(_text(response))

  return await _run_all(problems, backend, [*node_models, aggregator_model], params, one)


# ---------------------------------------------------------------------------
# Synchronous entry points (the executor's per-thread event loop)
# ---------------------------------------------------------------------------


def run_single(*args, **kwargs) -> list[QueryOutcome]:
  """One call per problem (see ``single_async``)."""
  return executor.run_sync(single_async(*args, **kwargs))


def run_self_consistency(*args, **kwargs) -> list[QueryOutcome]:
  """Majority over independent samples (see ``self_consistency_async``)."""
  return executor.run_sync(self_consistency_async(*args, **kwargs))


def run_debate(*args, **kwargs) -> list[QueryOutcome]:
  """Multi-agent debate (see ``debate_async``)."""
  return executor.run_sync(debate_async(*args, **kwargs))


def run_mixture(*args, **kwargs) -> list[QueryOutcome]:
  """One propose-and-synthesize layer (see ``mixture_async``)."""
  return executor.run_sync(mixture_async(*args, **kwargs))


def run_mlpo(*args, **kwargs) -> list[QueryOutcome]:
  """Leader and peers over rounds (see ``mlpo_async``)."""
  return executor.run_sync(mlpo_async(*args, **kwargs))


def run_neuromas(*args, **kwargs) -> list[QueryOutcome]:
  """Layered role-free network (see ``neuromas_async``)."""
  return executor.run_sync(neuromas_async(*args, **kwargs))


# ---------------------------------------------------------------------------
# HieraMAS plans run by the executor
# ---------------------------------------------------------------------------


def plan_critical_path(plan: Plan, result: QueryResult) -> float:
  """Critical path of an executed plan from its calls' own latencies.

  A role starts when its live predecessors are done; its proposers run in
  parallel, then its synthesizer; the decision node starts when every role is
  done (the executor's schedule, without queueing).
  """
  checked = executor.check_plan(plan)
  proposer: dict[int, float] = collections.defaultdict(float)
  synthesizer: dict[int, float] = collections.defaultdict(float)
  decision = 0.0
  for c in result.calls:
    if c.kind == executor.PROPOSER:
      proposer[c.role_index] = max(proposer[c.role_index], c.latency)
    elif c.kind == executor.SYNTHESIZER:
      synthesizer[c.role_index] += c.latency
    else:
      decision += c.latency
  done: dict[int, float] = {}
  for r in checked.order:
    ready = max((done[i] for i in checked.predecessors[r]), default=0.0)
    done[r] = ready + proposer[r] + synthesizer[r]
  return max(done.values(), default=0.0) + decision


def single_call_role_plans(problems: Sequence[Problem], roles: Sequence[Any], model: str, adjacency: Any, *,
                           num_proposers: int = 0, sample: int = 0) -> list[Plan]:
  """Plans of the paper's Full-Graph / Random-Graph baselines (its code's ``aggregator_only`` and ``fixed_llm``).

  Every role is one call of ``model`` (its synthesizer; the ``num_proposers``
  proposer slots are left empty, so the assignment keeps the [R][P+1] shape),
  and ``model`` is the decision node too. ``adjacency`` is one [R, R] DAG for
  every query or [B, R, R], one per query.
  """
  adjs = np.asarray(adjacency)
  if adjs.ndim == 2:
    adjs = np.broadcast_to(adjs, (len(problems),) + adjs.shape)
  if adjs.ndim != 3 or len(adjs) != len(problems):
    raise ValueError(f"adjacency has shape {np.asarray(adjacency).shape}; give one [R, R] DAG or one per query "
                     f"[{len(problems)}, R, R]")
  row = [None] * int(num_proposers) + [model]
  return [Plan(problem=p, roles=roles, assignment=[list(row) for _ in roles], adjacency=np.array(adj),
               decision_model=model, sample=sample) for p, adj in zip(problems, adjs)]


def outcomes_from_results(plans: Sequence[Plan], results: Sequence[QueryResult]) -> list[QueryOutcome]:
  """Executor results as QueryOutcomes (one per plan, same order)."""
  if len(plans) != len(results):
    raise ValueError(f"{len(plans)} plans but {len(results)} results; pass the plans that produced the results")
  return [QueryOutcome(uid=res.uid, final_text=res.final_text, calls=list(res.calls),
                       latency_s=plan_critical_path(plan, res), errors=list(res.errors),
                       details={"role_outputs_present": [t is not None for t in res.role_outputs]})
          for plan, res in zip(plans, results)]
