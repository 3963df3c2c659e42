"""MLPO: train a leader LLM (our JAX decoder) with GRPO to synthesize the answers of K peers over T rounds.

Run (offline default: simulated peers on synthetic MATH-format problems, a tiny random leader):

  python -m launch.train_leader --config=configs/mlpo.py --workdir=runs/mlpo
  python -m launch.train_leader --config=configs/mlpo.py:smoke --workdir=/tmp/mlpo_smoke
  python -m launch.train_leader --config=configs/mlpo.py --workdir=runs/mlpo_smollm2 \
      --config.mlpo.leader=$(python -c "from hieramas_jax.lm import weights; print(weights.find_smollm2_gguf())")

Args as configs/math.py (smoke, files, openai, paper_gpt, paper_qwen; comma-separated): task and peer
pool come from the shared base config (``task.*``, ``llm.*``: peers are pool models on any backend, sim,
openai or local). The ``mlpo`` section holds the leader and GRPO settings. From the paper (arXiv
2507.08960): K untrained peers answer, the leader reads them and answers, peers refine on the leader's
answer for T rounds, only the leader is trained, with GRPO. Values marked "project's choice" are not
given by the sources this project could read; each says why it was chosen.
"""

import ml_collections

from hieramas_jax import config as base


def get_config(arg: str | None = None):
  parsed = base.parse_arg(arg)
  # The flags now; field=value assignments last, once the mlpo section exists (e.g. :smoke,mlpo.steps=8).
  c = base.base_config("math", base.ConfigArg(flags=parsed.flags), setting="paper_gpt")
  m = c.mlpo = ml_collections.ConfigDict()
  # The model trained: 'tiny' (a random 2-layer decoder with a byte tokenizer: plumbing only, it cannot learn
  # MATH) or a .gguf file / Hugging Face folder / leader folder of an earlier run.
  m.leader = "tiny"
  m.leader_dtype = "float32"  # 'float32' or 'bfloat16' (weights, activations and optimizer moments)
  m.peers = 3  # K; project's choice: the MLPO baseline's default (baselines/leader.py), so both run the same team
  m.peer_models = []  # pool names cycled over the peers; empty: llm.decision_model for every peer
  m.rounds = 2  # T; project's choice: the MLPO baseline's default, so the leader trains as it is evaluated
  # GRPO (DeepSeekMath's form). Project's choices where no source value was found:
  m.group_size = 8  # G leader samples per prompt: a group large enough that one right sample stands out
  m.queries_per_step = 4  # problems per step; each gives T groups (one per round)
  m.steps = 200
  m.max_new_tokens = 256  # the leader's answer budget
  m.temperature = 1.0  # sampling at the policy's own distribution keeps the log-prob ratio exact
  m.top_p = 1.0
  m.clip_eps = 0.2  # PPO's usual ratio clip
  m.kl_coef = 0.04  # beta: DeepSeekMath's GRPO value
  m.loss_level = "sequence"  # 'sequence' (1/|o_i| per completion, as GRPO is written) or 'token' (as DAPO)
  m.updates_per_batch = 1  # mu: gradient steps per rollout batch (1: on-policy, the ratio starts at 1)
  m.adv_eps = 1e-6  # added to each group's reward std
  m.learning_rate = 1e-6  # a usual full-parameter RL rate for 0.1-1.5B models; tiny models want ~1e-3
  m.weight_decay = 0.0
  m.grad_clip = 1.0
  # Reward: 1 when the task's grader accepts the leader's answer, else 0, plus format_reward when the task can
  # read an answer at all (0: correctness only).
  m.format_reward = 0.0
  # Characters of each peer answer the leader reads, from the end (where answers are stated); 0: whole answers,
  # as the MLPO baseline shows them. Smoke runs set it: the tiny byte-level leader reads 4096 bytes at most.
  m.peer_answer_chars = 0
  if "smoke" in base.parse_arg(arg):
    m.group_size, m.queries_per_step, m.steps, m.max_new_tokens = 4, 2, 4, 16
    m.learning_rate = 1e-3
    c.checkpoint.every_steps = 2
    m.peer_answer_chars = 120
  return base.override(c, parsed.assignments)
