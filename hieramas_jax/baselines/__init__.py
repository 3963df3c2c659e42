"""Baseline multi-agent methods over an LLM backend (host side: no JAX), and their registry.

Every method answers a batch of problems with the same backend and task as
HieraMAS and returns one ``results.QueryResult`` per problem (the type the
executor and ``HieraMAS.run`` return too): the final text (to be graded by the
task's grader), every call made (``results.CallRecord``), the errors, and the
query's latency (its critical path, see ``core``).

Methods (shapes in calls per query), each a function ``fn(ctx, settings)`` and
an entry of :data:`METHODS` (``registry``):

* ``single`` / ``cot``: one call on a plain prompt / asking to reason step by
  step. 1 call.
* ``self_consistency``: ``samples`` independent calls (distinct sample indices),
  majority over the extracted answers. ``samples`` calls.
* ``debate``: ``agents`` answer, then for ``rounds - 1`` more rounds each agent
  reads the other agents' previous answers and its own and answers again;
  majority over the last answers. ``agents * rounds`` calls.
* ``mixture``: ``proposers`` calls of one model, one synthesizer reads them.
  ``proposers + 1`` calls.
* ``mlpo``: ``peers`` untrained peers answer, a leader synthesizes; for
  ``rounds - 1`` more rounds the peers refine on the leader's output and the
  leader synthesizes again. ``rounds * (peers + 1)`` calls.
* ``neuromas``: ``depth`` layers of ``width`` plain LLM nodes, each reading all
  outputs of the previous layer, one aggregator. ``depth * width + 1`` calls.
* ``full_graph`` / ``random_graph``: the paper's Full-Graph and Random-Graph,
  one model filling every role as a single call and the decision node, on the
  full DAG / one seeded random DAG. ``roles + 1`` calls.
* ``selector_*``, ``hieramas*``: a trained HieraMAS and its ablations
  (``topologies``; they need ``MethodContext.trained``).

Run one without the evaluation: ``baselines.run("debate", problems, backend,
task, model="m", agents=3, rounds=2)``.

Modules: core (context, call recorder), prompts (and the majority
vote), options (typed settings: which flag and config field feed each option),
single_model (single, cot, self-consistency), peers (debate, mixture), leader
(MLPO-style), layered (NeuroMAS-style), plans (executor plans as runs),
topologies (full / random graph, HieraMAS ablations), registry.
"""

from hieramas_jax.baselines.core import MethodContext, Query
from hieramas_jax.baselines.layered import NeuroMASSettings, neuromas
from hieramas_jax.baselines.leader import MLPOSettings, mlpo
from hieramas_jax.baselines.options import Option, option
from hieramas_jax.baselines.peers import DebateSettings, MixtureSettings, debate, mixture
from hieramas_jax.baselines.plans import execute_plans, single_call_role_plans
from hieramas_jax.baselines.prompts import (SYSTEM_PROMPT, cot_messages, debate_messages, layer_messages,
                                            majority_vote, plain_messages, refine_messages, synthesis_messages)
from hieramas_jax.baselines.registry import METHODS, Flag, Method, Registry, run
from hieramas_jax.baselines.single_model import SelfConsistencySettings, SingleSettings, self_consistency, single
from hieramas_jax.baselines.topologies import TrainedSystem, paper_random_dag
