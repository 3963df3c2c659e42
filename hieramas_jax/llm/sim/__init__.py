"""The simulated LLM pool: the offline default backend, and its oracle.

A :class:`SimWorld` is the hidden truth of a pool: per model a price, a latency,
a completion length range, a skill table (logit of solving a problem alone, per
subject and difficulty level) and a ``pick`` strength (how much the candidate
answers it reads move it: the synthesizer's skill). ``SimWorld.p_correct`` is the
one probability model; the text simulator and the oracle both use it:

    p = sigmoid(skill[model, subject, level]
                + pick[model] * (gain * log(1 + n_correct) - mislead * log(1 + n_wrong)))

where n_correct / n_wrong count the right / wrong answers the prompt already
holds (proposals, predecessors' outputs). So seeing good proposals raises the
chance of a right answer (the collaboration effect) and a good synthesizer
(large pick) exploits it more.

:class:`SimulatedBackend` answers chat requests: it finds the problem by its
question text inside the messages, reads the candidate answers in the prompt
with the task's own ``extract``/``grade``, draws correctness from ``p_correct``
with an RNG derived from (seed, model, messages, sample index) (so results do not
depend on concurrency order), and writes a full answer in the task's format
(some reasoning, then ``task.render_answer``). Token counts: prompt tokens by the
fast 4-characters-per-token estimate, completion tokens drawn in the model's
range (the text has that length).

:class:`Oracle` computes from the same model, without text, the exact solve
rate, expected cost and expected reward of an assignment and DAG for a query
type (subject, level), and searches the best assignment and DAG.

Two worlds (``make_world``, config ``llm.sim_world``): the default *invented*
one above, where wrong answers are independent random perturbations, and the
*anchored* one (``anchored_world``), where each model's single-call accuracy on
the task's mix equals its published score (``sim_facts``) and answers are
correlated: every problem has a hardness shared by all models and k shared
wrong values (distractors) that wrong answers fall into with problem-specific
shares (``AnswerModel``). There the simulator and the oracle track which value
(right, distractor j, an error of one's own) each output states, so majority
voting gains what hard problems and shared mistakes allow, not more; the oracle
stays exact (an expectation over a finite set of problem traits).

Modules: ``world`` (models, skills, the two worlds), ``answers`` (per-problem
traits of the anchored world), ``backend`` (reading prompts, writing answers),
``oracle`` (exact expectations, single-call and majority-vote accuracy),
``search`` (the oracle's search for the best plan). Every public name is
re-exported here: ``from hieramas_jax.llm import sim`` then ``sim.Oracle``.
"""

from hieramas_jax.llm.sim import search
from hieramas_jax.llm.sim.answers import (ANCHORED_HARDNESS_SD, WRONG_PROFILES, AnswerModel, Latent, normal_hardness,
                                          wrong_split)
from hieramas_jax.llm.sim.backend import ProblemRegistry, SimReading, SimulatedBackend
from hieramas_jax.llm.sim.oracle import Assignment, Oracle, OracleResult, reward_of
from hieramas_jax.llm.sim.search import PlanRules, PlanSearchResult, best_plan
from hieramas_jax.llm.sim.world import (LEVELS, WORLDS, RoleEffect, SimModel, SimWorld, SkillTable, anchored_world,
                                        default_world, make_world, mixture_single_call)

__all__ = [
    "ANCHORED_HARDNESS_SD", "WRONG_PROFILES", "AnswerModel", "Latent", "normal_hardness", "wrong_split",
    "ProblemRegistry", "SimReading", "SimulatedBackend",
    "Assignment", "Oracle", "OracleResult", "reward_of",
    "PlanRules", "PlanSearchResult", "best_plan", "search",
    "LEVELS", "WORLDS", "RoleEffect", "SimModel", "SimWorld", "SkillTable", "anchored_world", "default_world",
    "make_world", "mixture_single_call",
]
