"""The experiment every task config starts from: this project's training recipe in the paper's GPT setting.

Not a config file of its own: configs/<task>.py call ``experiment(task, arg)``,
set the task's own values (proposers, DAG densities, K, inference rules, stage
2's optimizer) and return ``base.finish(c, arg)``, which applies their arg
(comma-separated, e.g. ``--config=configs/math.py:smoke,seed=3``):

  smoke                   tiny sizes (a run of about a minute on 2 CPU cores)
  files                   the benchmark files instead of synthetic problems (MATH; the others always use files)
  openai                  real OpenAI-compatible endpoints (``llm.models``) instead of the simulator
  paper_gpt, paper_qwen   a paper setting with the paper code's training recipe (hieramas_jax/presets.py)
  field=value             any field, last of all (a value holding commas in brackets: graphs.density_range=(0.3,0.7))

The paper's values, with their sources, are in hieramas_jax/presets.py; where
this recipe differs from them and why: README, "Deviations from the paper"; the
measurements behind the defaults: EXPERIMENTS.md.
"""

from hieramas_jax import config as base


def experiment(task: str, arg=None):
  """The shared values for ``task``; plumbing (data, endpoints, encoder, checkpoints) keeps the library's."""
  c = base.defaults(task, arg)

  # ---- LLMs: the paper's GPT setting (a paper_qwen arg switches pool and decision model).
  c.llm.decision_model = "GPT-5-mini"
  c.llm.temperature = 0.2
  c.llm.max_tokens = 2048
  c.llm.sim_world = "anchored"  # the offline simulator calibrated to published scores

  # ---- Reward of a graded output: solved max(exp(-c_s cost), 0.5), failed max(-exp(c_f cost), -2.5), cost in USD.
  c.reward.cost_solved = 300.0  # c_s
  c.reward.cost_failed = 300.0  # c_f
  c.reward.system_cost = "total"  # what the system reward counts: 'total' or 'decision' (the reference code's)
  c.reward.stage2_cost_solved = 500.0  # c_s of stage 2's labels (paper: 500)

  # ---- LLM selector: sizes and skip form.
  c.selector.hidden_dim = 256
  c.selector.synthesizer_may_skip = True
  c.selector.proposer_may_skip = True
  c.selector.skip_head = "gate"  # a run/skip gate per position ('shared': skip scored like a model)
  c.selector.input_scale = True  # unit-variance inputs: logits that depend on the query
  c.selector.init_skip_bias = 1.0  # p(skip) = sigmoid(1) at first: cheaper early exploration (paper: 0)

  # ---- Graph classifier.
  c.gcn.role_dim = 32
  c.gcn.hidden_dim = 128
  c.gcn.num_layers = 2
  c.gcn.mlp_dim = 64

  # ---- Stage 1: REINFORCE on the selector (AdamW).
  c.stage1.steps = 1800  # paper: 12 steps at 2e-3; a higher rate locks on the first good assignment
  c.stage1.batch_size = 16
  c.stage1.learning_rate = 3e-4
  c.stage1.lr_schedule = "cosine"  # 'cosine' (to 0 over the steps) or 'constant'
  c.stage1.weight_decay = 1e-5
  c.stage1.grad_clip = 1.0
  c.stage1.entropy_coef = 1.0
  c.stage1.temperature_start = 10.0  # sampling temperature, cosine-annealed over the steps
  c.stage1.temperature_end = 0.8
  c.stage1.alpha = 0.5  # multi-level credit: alpha * node reward + (1 - alpha) * system reward
  c.stage1.baseline = "group"  # 'none' (as published), 'ema', 'batch_mean' or 'group' (leave-one-out per query)
  c.stage1.group_size = 4  # samples per query with the group baseline (batch_size must be a multiple)
  c.stage1.ema_decay = 0.9  # of the 'ema' baseline
  # What trains a role's run/skip decision: 'role' (as published), 'system' or 'role_vs_system' (running rated by
  # the role's credit, skipping by the system reward); 'role' for the first run_skip_warmup of the steps.
  c.stage1.run_skip_credit = "role_vs_system"
  c.stage1.run_skip_warmup = 0.5
  c.stage1.eval_every = 50
  c.stage1.val_samples = 1  # runs per validation query
  c.stage1.keep_margin = 0.0  # later parameters are kept unless this many standard errors below the best

  # ---- Stage 2: labels from G DAGs per query, each run samples_per_graph times, the top k positive.
  c.graphs.train_pool_size = 100  # stage 1's DAG pool
  c.graphs.candidate_density_range = (0.3, 0.7)  # the K DAGs scored at inference and the random-DAG baselines
  c.stage2.graphs_per_query = 32  # paper: 5 DAGs x 1 run, top 2: labels then favour the cheapest solved DAGs
  c.stage2.samples_per_graph = 8
  c.stage2.top_k = 8
  c.stage2.epochs = 20
  return c
