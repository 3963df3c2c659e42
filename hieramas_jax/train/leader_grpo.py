"""The MLPO leader's model and GRPO on token sequences (no LLM-system knowledge here).

``LeaderModel`` (a decoder config, parameters and tokenizer: a tiny random one, a leader folder, a .gguf
file or a Hugging Face folder), the leader's group sampling, the padded batch of prompt + completion
tokens with their advantages, and ``GRPOLearner`` (one jitted GRPO update with optax over ``lm.grpo``'s
losses, against a frozen reference). ``train.leader`` runs the MLPO loop on top of them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hieramas_jax import distributed
from hieramas_jax.llm import base as llm_base
from hieramas_jax.llm import routing as llm_routing
from hieramas_jax.lm import config as lm_config
from hieramas_jax.lm import decoder
from hieramas_jax.lm import generate as lm_generate
from hieramas_jax.lm import grpo
from hieramas_jax.lm import leader_export
from hieramas_jax.lm.byte_tokenizer import ByteTokenizer
from hieramas_jax.train import environment

ConfigError = environment.ConfigError
MIN_LENGTH_BUCKET = 16


class NonFiniteLossError(FloatingPointError):
  """The GRPO loss became NaN or infinite; nothing of that step is saved."""


# ---------------------------------------------------------------------------
# The leader model
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class LeaderModel:
  """A decoder config, its parameters, a tokenizer and where they came from."""

  config: lm_config.DecoderConfig
  params: dict[str, Any]
  tokenizer: Any
  tokenizer_ref: dict[str, str]
  source: str


def tiny_leader(seed: int, dtype: Any = jnp.float32, **overrides: Any) -> LeaderModel:
  """A random 2-layer, width-64 Llama-shaped decoder with a byte tokenizer (tests, smoke runs)."""
  values = dict(max_position_embeddings=4096)
  values.update(overrides)
  cfg = lm_config.tiny("llama", **values)
  params = decoder.init_params(cfg, jax.random.key(seed), dtype=dtype)
  return LeaderModel(cfg, params, ByteTokenizer(), {"kind": "byte"}, "tiny")


def load_leader_model(spec: str, *, seed: int, dtype: str = "float32") -> LeaderModel:
  """'tiny', a leader folder, a .gguf file or a Hugging Face folder, in ``dtype``."""
  if dtype not in llm_routing.LOCAL_DTYPES:
    raise ConfigError(f"mlpo.leader_dtype={dtype!r}; choose one of {llm_routing.LOCAL_DTYPES}")
  jdtype = jnp.dtype(dtype)
  if spec == "tiny":
    return tiny_leader(seed, jdtype)
  path = pathlib.Path(spec).expanduser()
  if not path.exists():
    raise ConfigError(f"mlpo.leader={spec!r} does not exist; give 'tiny', a .gguf file, a Hugging Face folder or a "
                      f"leader folder ({llm_routing.SMOLLM2_HINT})")
  if leader_export.is_leader_dir(path):
    cfg, params, tokenizer = leader_export.load_leader(path, jdtype)
    meta = json.loads((path / leader_export.META_NAME).read_text())
    return LeaderModel(cfg, params, tokenizer, dict(meta["tokenizer"]), str(path.absolute()))
  try:
    from hieramas_jax.lm import weights  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(f"mlpo.leader={spec!r}: loading model files needs hieramas_jax.lm.weights ({e})") from None
  try:
    cfg, params, tokenizer = weights.load_model(path, dtype=jdtype)
  except ValueError as e:  # a file that is not a model of a supported family: one line, not a traceback
    raise ConfigError(f"mlpo.leader={spec!r}: {e}") from None
  return LeaderModel(cfg, params, tokenizer, leader_export.tokenizer_reference(tokenizer, path),
                     str(path.absolute()))


def chat_ids(tokenizer: Any, messages: Sequence[llm_base.Message]) -> list[int]:
  """Token ids of a chat prompt through the tokenizer's template (as ``lm.backend`` builds them)."""
  return list(tokenizer.encode(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)))


# ---------------------------------------------------------------------------
# GRPO on token sequences (no LLM-system knowledge below this line)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
  """Sampling and update settings of GRPO (see configs/mlpo.py for each value's source)."""

  group_size: int = 8
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_p: float = 1.0
  clip_eps: float = 0.2
  kl_coef: float = 0.04
  loss_level: str = "sequence"
  updates_per_batch: int = 1
  adv_eps: float = 1e-6
  learning_rate: float = 1e-6
  weight_decay: float = 0.0
  grad_clip: float = 1.0

  def __post_init__(self):
    for name in ("group_size", "max_new_tokens", "updates_per_batch"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"mlpo.{name}={value!r}; it must be a whole number >= 1")
    if self.group_size < 2:
      raise ConfigError(f"mlpo.group_size={self.group_size}; GRPO compares samples within a group: use >= 2")
    if self.loss_level not in grpo.LOSS_LEVELS:
      raise ConfigError(f"mlpo.loss_level={self.loss_level!r}; choose one of {grpo.LOSS_LEVELS}")
    if not self.temperature > 0:
      raise ConfigError(f"mlpo.temperature={self.temperature}; GRPO samples its groups: use a temperature > 0")
    if not 0 < self.top_p <= 1:
      raise ConfigError(f"mlpo.top_p={self.top_p}; it must lie in (0, 1]")
    for name in ("clip_eps", "learning_rate", "grad_clip", "adv_eps"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"mlpo.{name}={getattr(self, name)}; it must be > 0")
    for name in ("kl_coef", "weight_decay"):
      if not getattr(self, name) >= 0:
        raise ConfigError(f"mlpo.{name}={getattr(self, name)}; it must be >= 0")

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> GRPOSettings:
    return cls(**{f.name: m[f.name] for f in dataclasses.fields(cls)})


def make_optimizer(settings: GRPOSettings) -> optax.GradientTransformation:
  """AdamW after global-norm gradient clipping."""
  return optax.chain(optax.clip_by_global_norm(settings.grad_clip),
                     optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay))


@dataclasses.dataclass
class Samples:
  """G completions of each prompt: token ids (stop token kept when the row stopped), texts."""

  tokens: list[list[int]]  # [prompts * G], prompt-major
  texts: list[str]
  finish_reasons: list[str]


def sample_groups(model: LeaderModel, params: dict[str, Any], prompt_ids: Sequence[Sequence[int]], key: jax.Array,
                  settings: GRPOSettings) -> Samples:
  """``settings.group_size`` completions of every prompt (one batched generation).

  ``key``: one key for the batch, or one per row ([len(prompt_ids) * group_size], prompt-major): each row then
  draws with its own key, whatever is batched beside it.
  """
  rows = [list(p) for p in prompt_ids for _ in range(settings.group_size)]
  longest = max(len(r) for r in rows)
  if longest + settings.max_new_tokens > model.config.max_position_embeddings:
    raise ConfigError(f"a leader prompt of {longest} tokens plus mlpo.max_new_tokens={settings.max_new_tokens} "
                      f"exceeds the leader's context of {model.config.max_position_embeddings} tokens; lower "
                      "mlpo.max_new_tokens, or set mlpo.peer_answer_chars to show the leader the ends of the peers' "
                      "answers only")
  stop_ids = tuple(model.tokenizer.eos_ids)
  result = lm_generate.generate(params, model.config, rows, key=key, max_new_tokens=settings.max_new_tokens,
                                temperature=settings.temperature, top_p=settings.top_p, stop_ids=stop_ids)
  tokens = [list(t) + ([stop_ids[0]] if reason == "stop" else [])  # the stop token is learned too
            for t, reason in zip(result.tokens, result.finish_reasons)]
  texts = [model.tokenizer.decode(t) for t in result.tokens]
  return Samples(tokens, texts, list(result.finish_reasons))


def length_bucket(n: int) -> int:
  """``n`` rounded up to an eighth of its power-of-two bucket: at most 8 compiled lengths per octave, <= 12.5% padding."""
  step = max(MIN_LENGTH_BUCKET, lm_generate.bucket(n) // 8)
  return -(-max(int(n), 1) // step) * step


@dataclasses.dataclass
class Batch:
  """Padded sequences of one update: prompt + completion per row, and which positions are completion."""

  tokens: np.ndarray  # [N, L] int32
  seq_mask: np.ndarray  # [N, L] bool: real tokens
  completion_mask: np.ndarray  # [N, L-1] float32: log-prob slot t predicts a completion token t+1
  advantages: np.ndarray  # [N] float32


def build_batch(prompt_ids: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], rewards: np.ndarray,
                valid: np.ndarray, adv_eps: float) -> Batch:
  """Rows prompt-major (group g's samples are rows g*G..g*G+G-1); groups not ``valid`` get no weight.

  Args:
    prompt_ids: one prompt per group.
    completions: G completions per group, group-major.
    rewards: [groups, G].
    valid: [groups] bool: False masks a group out (a failed peer call).
    adv_eps: added to each group's reward std.
  """
  groups, size = rewards.shape
  if len(prompt_ids) != groups or len(completions) != groups * size:
    raise ValueError(f"build_batch: {len(prompt_ids)} prompts and {len(completions)} completions for rewards "
                     f"{rewards.shape}; expected {groups} and {groups * size}")
  rows = [list(prompt_ids[i // size]) + list(c) for i, c in enumerate(completions)]
  length = length_bucket(max(len(r) for r in rows))
  tokens = np.zeros((len(rows), length), np.int32)
  seq_mask = np.zeros((len(rows), length), bool)
  completion_mask = np.zeros((len(rows), length - 1), np.float32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
    seq_mask[i, :len(row)] = True
    start = len(prompt_ids[i // size])
    if valid[i // size]:
      completion_mask[i, start - 1:len(row) - 1] = 1.0
  rewards = np.where(valid[:, None], rewards, 0.0).astype(np.float32)
  advantages = np.asarray(grpo.group_advantages(jnp.asarray(rewards), adv_eps)).reshape(-1)
  return Batch(tokens, seq_mask, completion_mask, advantages.astype(np.float32))


@functools.partial(jax.jit, static_argnames=("cfg",))
def sequence_logprobs(params: dict[str, Any], cfg: lm_config.DecoderConfig, tokens: jax.Array,
                      seq_mask: jax.Array) -> jax.Array:
  """[N, L-1] log-probs of each next token (``lm.generate.token_logprobs``), jitted."""
  return lm_generate.token_logprobs(params, cfg, tokens, seq_mask)


def _same_values(a: Any, b: Any) -> jax.Array:
  """Whether two parameter trees hold the same values (a traced bool)."""
  return jnp.all(jnp.stack([jnp.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                   jax.tree_util.tree_leaves(b))]))


class GRPOLearner:
  """The jitted GRPO update of a decoder against a frozen reference copy of its starting weights.

  One batch is one program: the reference's log-probs (for the KL term) and the policy's before the first
  update (for the ratio of later ones), then ``updates_per_batch`` gradient steps. While the weights are the
  reference's (the first step) the KL term is exactly zero with a zero gradient: the reference's log-probs,
  computed apart, differ from the loss's forward by float rounding, and Adam would scale that noise up to a
  full step on every weight (and differently on each device layout). In a multi-process run
  (``distributed``) the batch's rows are split over every device of every process and XLA averages the
  gradients.
  """

  def __init__(self, cfg: lm_config.DecoderConfig, settings: GRPOSettings, ref_params: dict[str, Any]):
    self.cfg = cfg
    self.settings = settings
    self.ref_params = ref_params
    self.optimizer = make_optimizer(settings)
    self._batch_step = jax.jit(self._batch_updates)

  def init(self, params: dict[str, Any]) -> Any:
    return self.optimizer.init(params)

  def _update(self, params, opt_state, tokens, seq_mask, completion_mask, advantages, old_logprobs, ref_logprobs,
              ref_params=None):
    s = self.settings
    at_reference = False if ref_params is None else _same_values(params, ref_params)

    def loss_fn(p):
      logprobs = lm_generate.token_logprobs(p, self.cfg, tokens, seq_mask)
      # None: the same values as this forward's (one update per batch; no KL term): no extra forward pass.
      old = jax.lax.stop_gradient(logprobs) if old_logprobs is None else old_logprobs
      ref = jax.lax.stop_gradient(logprobs) if ref_logprobs is None else ref_logprobs
      ref = jnp.where(at_reference, jax.lax.stop_gradient(logprobs), ref)  # the policy is the reference: KL 0
      return grpo.grpo_loss(logprobs, old, ref, advantages, completion_mask, clip_eps=s.clip_eps,
                            kl_coef=s.kl_coef, loss_level=s.loss_level)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))

  def _batch_updates(self, params, opt_state, ref_params, rows):
    """Every update of one batch; returns (params, opt_state, the last update's metrics, every update's loss)."""
    tokens, seq_mask = rows["tokens"], rows["seq_mask"]
    # The policy before this batch's first update; with one update per batch that is the update's own forward.
    old = None
    if self.settings.updates_per_batch > 1:
      old = jax.lax.stop_gradient(lm_generate.token_logprobs(params, self.cfg, tokens, seq_mask))
    # The frozen reference, needed only for the KL term (the 'kl' metric reads 0 without it).
    ref = None
    if ref_params is not None:
      ref = jax.lax.stop_gradient(lm_generate.token_logprobs(ref_params, self.cfg, tokens, seq_mask))

    def one_update(carry, _):
      params, opt_state = carry
      params, opt_state, metrics = self._update(params, opt_state, tokens, seq_mask, rows["completion_mask"],
                                                rows["advantages"], old, ref, ref_params)
      return (params, opt_state), metrics

    (params, opt_state), metrics = jax.lax.scan(one_update, (params, opt_state), None,
                                                length=self.settings.updates_per_batch)
    return params, opt_state, jax.tree_util.tree_map(lambda x: x[-1], metrics), metrics["loss"]

  def update(self, params: dict[str, Any], opt_state: Any, batch: Batch, *, step: int
             ) -> tuple[dict[str, Any], Any, dict[str, float]]:
    """``updates_per_batch`` gradient steps on one batch; raises NonFiniteLossError on a NaN/inf loss.

    In a multi-process run every process passes the same (gathered) batch and gets the same parameters back.
    """
    rows = {"tokens": batch.tokens, "seq_mask": batch.seq_mask, "completion_mask": batch.completion_mask,
            "advantages": batch.advantages}
    ref = self.ref_params if self.settings.kl_coef > 0 else None  # read only when the KL term needs it
    if distributed.is_multi_process():
      # Rows over every device of every process; padding rows (no completion tokens, advantage 0) weigh nothing.
      rows, _ = distributed.pad_rows(rows, distributed.total_devices())
      params, opt_state, metrics, losses = distributed.data_parallel(self._batch_step, [params, opt_state, ref],
                                                                     rows)
    else:
      params, opt_state, metrics, losses = self._batch_step(params, opt_state, ref,
                                                            jax.tree_util.tree_map(jnp.asarray, rows))
    for loss in np.asarray(losses):
      if not np.isfinite(loss):
        raise NonFiniteLossError(f"GRPO loss is {loss} at leader step {step}; lower mlpo.learning_rate or check "
                                 "the rewards and the leader's weights (mlpo.leader_dtype='float32' is safest)")
    return params, opt_state, {k: float(v) for k, v in metrics.items()}
