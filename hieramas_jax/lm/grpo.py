"""GRPO (group relative policy optimization) as pure loss functions, in the style of rlax.

Shapes: ``B`` completions (rows), ``T`` completion tokens per row (padded, with a
0/1 ``mask``). Completions come in groups: the ``S`` samples of one prompt form a
group, and ``group_advantages`` normalises rewards within each group (DeepSeekMath's
GRPO, arXiv 2402.03300, "outcome supervision"): every token of completion i gets
the advantage ``(r_i - mean(r)) / (std(r) + eps)`` of its group.

The objective of one token (to maximise) is PPO's clipped surrogate minus a KL
penalty to a frozen reference policy:

  min(rho * A, clip(rho, 1 - clip_eps, 1 + clip_eps) * A) - kl_coef * k3,
  rho = exp(logp - old_logp),   k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1,

where k3 is the unbiased, non-negative KL(pi || pi_ref) estimator GRPO uses
(Schulman's "k3"). ``grpo_loss`` averages it either per token over the batch
('token': every token weighs the same, as DAPO) or per sequence ('sequence': the
mean over each completion's tokens, then over completions, as DeepSeekMath's
GRPO writes it with 1/|o_i|), and returns the negated mean as the loss.

Advantages, old and reference log-probs are data: each function stops their
gradients, so only ``logprobs`` (the policy being trained) receives any.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

LOSS_LEVELS = ("token", "sequence")


def group_advantages(rewards: chex.Array, eps: float = 1e-6) -> jax.Array:
  """Rewards normalised within each group: ``(r - mean) / (std + eps)`` along the last axis.

  Args:
    rewards: [G, S] rewards of G groups (prompts) of S samples each.
    eps: added to the standard deviation; a group whose samples all got the same
      reward has advantages 0 (nothing to prefer), not a division by zero.

  Returns:
    [G, S] advantages, gradient stopped. The standard deviation is the
    population one (``np.std``, ddof=0): this project's choice; TRL's GRPO uses
    the sample one (ddof=1), which scales advantages by sqrt((S - 1) / S).
  """
  chex.assert_rank(rewards, 2)
  chex.assert_type(rewards, float)
  rewards = jax.lax.stop_gradient(rewards)
  mean = jnp.mean(rewards, axis=-1, keepdims=True)
  std = jnp.std(rewards, axis=-1, keepdims=True)
  return jax.lax.stop_gradient((rewards - mean) / (std + eps))


def _token_advantages(advantages: chex.Array, like: chex.Array) -> jax.Array:
  """[B] sequence advantages broadcast over [B, T] tokens ([B, T] pass through)."""
  if advantages.ndim == 1:
    chex.assert_equal_shape_prefix([advantages, like], 1)
    return jnp.broadcast_to(advantages[:, None], like.shape)
  chex.assert_equal_shape([advantages, like])
  return advantages


def clipped_surrogate(logprobs: chex.Array, old_logprobs: chex.Array, advantages: chex.Array,
                      clip_eps: float) -> jax.Array:
  """PPO's clipped surrogate objective per token (to maximise).

  Args:
    logprobs: [B, T] log-probs of the sampled tokens under the policy being trained.
    old_logprobs: [B, T] their log-probs under the policy that sampled them.
    advantages: [B] per completion or [B, T] per token.
    clip_eps: the ratio is clipped to [1 - clip_eps, 1 + clip_eps].

  Returns:
    [B, T] ``min(rho * A, clip(rho) * A)`` with ``rho = exp(logprobs - old_logprobs)``.
  """
  chex.assert_rank(logprobs, 2)
  chex.assert_equal_shape([logprobs, old_logprobs])
  advantages = jax.lax.stop_gradient(_token_advantages(advantages, logprobs))
  ratio = jnp.exp(logprobs - jax.lax.stop_gradient(old_logprobs))
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  return jnp.minimum(ratio * advantages, clipped * advantages)


def kl_to_reference(logprobs: chex.Array, ref_logprobs: chex.Array) -> jax.Array:
  """GRPO's per-token KL(pi || pi_ref) estimate k3 = exp(d) - d - 1 with d = ref_logprobs - logprobs.

  Args:
    logprobs: [B, T] log-probs under the policy being trained (sampled from it).
    ref_logprobs: [B, T] log-probs of the same tokens under the frozen reference.

  Returns:
    [B, T] estimates, each >= 0 and 0 where the two agree.
  """
  chex.assert_rank(logprobs, 2)
  chex.assert_equal_shape([logprobs, ref_logprobs])
  log_ratio = jax.lax.stop_gradient(ref_logprobs) - logprobs
  return jnp.exp(log_ratio) - log_ratio - 1.0


def masked_mean(values: chex.Array, mask: chex.Array, loss_level: str) -> jax.Array:
  """The mean of ``values`` [B, T] over the tokens ``mask`` keeps, per token or per sequence.

  'token': sum over every kept token / their number. 'sequence': each row's mean
  over its kept tokens, then the mean over the rows that keep any (rows of batch
  padding, with no tokens, count for nothing).
  """
  chex.assert_equal_shape([values, mask])
  if loss_level not in LOSS_LEVELS:
    raise ValueError(f"loss_level={loss_level!r}; choose one of {LOSS_LEVELS}")
  mask = mask.astype(values.dtype)
  if loss_level == "token":
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  lengths = jnp.sum(mask, axis=-1)
  per_row = jnp.sum(values * mask, axis=-1) / jnp.maximum(lengths, 1.0)
  rows = (lengths > 0).astype(values.dtype)
  return jnp.sum(per_row * rows) / jnp.maximum(jnp.sum(rows), 1.0)


def grpo_loss(logprobs: chex.Array, old_logprobs: chex.Array, ref_logprobs: chex.Array,
              advantages: chex.Array, mask: chex.Array, *, clip_eps: float, kl_coef: float,
              loss_level: str = "sequence") -> tuple[jax.Array, dict[str, Any]]:
  """GRPO's loss (the negated objective) and its parts.

  Args:
    logprobs: [B, T] sampled tokens' log-probs under the policy being trained.
    old_logprobs: [B, T] under the policy that sampled them (equal to ``logprobs``'
      values on the first update of a batch).
    ref_logprobs: [B, T] under the frozen reference policy.
    advantages: [B] per completion (``group_advantages`` flattened) or [B, T].
    mask: [B, T] 1 for completion tokens, 0 for padding.
    clip_eps: PPO clip range of the ratio.
    kl_coef: weight of the KL penalty (beta); 0 switches it off.
    loss_level: 'token' or 'sequence' (see the module doc).

  Returns:
    (loss, metrics): metrics hold the mean surrogate ('policy_objective'), the
    mean KL estimate ('kl'), the fraction of tokens whose ratio was clipped
    ('clip_fraction'), the mean ratio ('ratio') and the token count ('tokens').
  """
  chex.assert_rank([logprobs, mask], 2)
  chex.assert_equal_shape([logprobs, old_logprobs, ref_logprobs, mask])
  if loss_level not in LOSS_LEVELS:
    raise ValueError(f"loss_level={loss_level!r}; choose one of {LOSS_LEVELS}")
  surrogate = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps)
  kl = kl_to_reference(logprobs, ref_logprobs)
  objective = surrogate - kl_coef * kl
  loss = -masked_mean(objective, mask, loss_level)
  ratio = jnp.exp(jax.lax.stop_gradient(logprobs - old_logprobs))
  clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(logprobs.dtype)
  token_mask = mask.astype(logprobs.dtype)
  metrics = {
      "policy_objective": jax.lax.stop_gradient(masked_mean(surrogate, mask, loss_level)),
      "kl": jax.lax.stop_gradient(masked_mean(kl, mask, loss_level)),
      "clip_fraction": masked_mean(clipped, mask, "token"),
      "ratio": masked_mean(ratio, mask, "token"),
      "tokens": jnp.sum(token_mask),
  }
  return loss, metrics
