"""GRPO's loss terms against numbers computed by hand (numpy on paper, written here), and gradient signs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hieramas_jax.lm import grpo
from hieramas_jax.lm.byte_tokenizer import ByteTokenizer

# One batch: 2 completions of 3 tokens, the second padded after 2 (mask 0).
LOGP = [[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]]
OLD = [[-1.2, -2.0, -0.1], [-0.3, -1.0, 0.0]]
REF = [[-1.0, -1.5, -0.5], [-0.5, -1.2, 0.0]]
ADV = [1.0, -0.5]
MASK = [[1, 1, 1], [1, 1, 0]]


def _arrays():
  return (jnp.array(LOGP), jnp.array(OLD), jnp.array(REF), jnp.array(ADV), jnp.array(MASK, jnp.float32))


def test_group_advantages_normalise_within_each_group():
  rewards = jnp.array([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 2.0, 2.0]])
  adv = grpo.group_advantages(rewards[:2], eps=1e-8)
  # Group 1: mean 0.5, std 0.5 -> +-1. Group 2: all equal -> 0 (eps keeps it finite).
  np.testing.assert_allclose(adv, [[1, -1, -1, 1], [0, 0, 0, 0]], atol=1e-6)
  # [0, 1, 2]: mean 1, population std sqrt(2/3) = 0.8164966 -> -+1.2247449.
  adv3 = grpo.group_advantages(jnp.array([[0.0, 1.0, 2.0]]), eps=0.0)
  np.testing.assert_allclose(adv3, [[-1.2247449, 0.0, 1.2247449]], rtol=1e-6)
  # eps enters the denominator: std 0.5 + eps 0.5 -> +-0.5.
  np.testing.assert_allclose(grpo.group_advantages(rewards[:1], eps=0.5), [[0.5, -0.5, -0.5, 0.5]], atol=1e-6)
  assert rewards.shape == grpo.group_advantages(rewards).shape


def test_group_advantages_pass_no_gradient_to_rewards():
  grad = jax.grad(lambda r: jnp.sum(grpo.group_advantages(r) * jnp.arange(4.0)))(jnp.array([[1.0, 0.0, 2.0, 5.0]]))
  np.testing.assert_array_equal(grad, np.zeros((1, 4)))


def test_group_advantages_check_shapes():
  with pytest.raises(AssertionError):
    grpo.group_advantages(jnp.array([1.0, 2.0]))


def test_clipped_surrogate_against_hand_values():
  # Ratios e^0.2 = 1.2214028, 1, e^-0.4 = 0.6703200; e^0 = 1, e^-0.2 = 0.8187308. clip_eps 0.2.
  logp, old, _, adv, _ = _arrays()
  surrogate = grpo.clipped_surrogate(logp, old, adv, clip_eps=0.2)
  # Row 0 (A=1): min(1.2214, 1.2) = 1.2; 1; min(0.6703, 0.8) = 0.6703. Row 1 (A=-0.5): -0.5, -0.4093654, -0.5.
  np.testing.assert_allclose(surrogate, [[1.2, 1.0, 0.6703200], [-0.5, -0.4093654, -0.5]], rtol=1e-6)
  # A negative advantage with a large ratio is not clipped (min picks the unclipped -1.5); a small one is (-0.8).
  ratio = jnp.log(jnp.array([[1.5, 0.5, 1.5, 0.5]]))
  out = grpo.clipped_surrogate(ratio, jnp.zeros_like(ratio), jnp.array([[1.0, 1.0, -1.0, -1.0]]), clip_eps=0.2)
  np.testing.assert_allclose(out, [[1.2, 0.5, -1.5, -0.8]], rtol=1e-6)


def test_clipped_surrogate_gradients():
  logp = jnp.log(jnp.array([[1.5, 1.5, 0.5, 1.1]]))
  adv = jnp.array([[1.0, -1.0, -1.0, 2.0]])
  grad = jax.grad(lambda lp: jnp.sum(grpo.clipped_surrogate(lp, jnp.zeros_like(lp), adv, clip_eps=0.2)))(logp)
  # d(rho * A)/d logp = rho * A where unclipped; 0 where the clip is active (ratio 1.5, A>0; ratio 0.5, A<0).
  np.testing.assert_allclose(grad, [[0.0, -1.5, 0.0, 2.2]], rtol=1e-6)
  # Neither the old log-probs nor the advantages get a gradient.
  g_old = jax.grad(lambda o: jnp.sum(grpo.clipped_surrogate(logp, o, adv, 0.2)))(jnp.zeros_like(logp))
  g_adv = jax.grad(lambda a: jnp.sum(grpo.clipped_surrogate(logp, jnp.zeros_like(logp), a, 0.2)))(adv)
  np.testing.assert_array_equal(g_old, 0.0)
  np.testing.assert_array_equal(g_adv, 0.0)


def test_kl_to_reference_is_k3():
  # d = ref - logp: log(0.25/0.5) = -0.6931472 -> 0.5 + 0.6931472 - 1 = 0.1931472;
  # log(0.4/0.2) = 0.6931472 -> 2 - 0.6931472 - 1 = 0.3068528; equal -> 0.
  logp = jnp.log(jnp.array([[0.5, 0.2, 0.3]]))
  ref = jnp.log(jnp.array([[0.25, 0.4, 0.3]]))
  np.testing.assert_allclose(grpo.kl_to_reference(logp, ref), [[0.1931472, 0.3068528, 0.0]], atol=1e-6)
  # Gradient in logp: 1 - exp(d): +0.5 (logp above ref: lowering it lowers the KL), -1 (below ref), 0.
  grad = jax.grad(lambda lp: jnp.sum(grpo.kl_to_reference(lp, ref)))(logp)
  np.testing.assert_allclose(grad, [[0.5, -1.0, 0.0]], atol=1e-6)
  assert float(jnp.min(grpo.kl_to_reference(jnp.array([[-3.0, 0.0]]), jnp.array([[0.0, -3.0]])))) > 0


def test_grpo_loss_token_and_sequence_levels_against_hand_values():
  logp, old, ref, adv, mask = _arrays()
  # Objective = surrogate - 0.1 * k3; k3 = [[0, e^0.5 - 1.5 = 0.1487213, 0], [e^-0.2 - 0.8 = 0.0187308, 0, -]].
  # Kept objectives: 1.2, 0.9851279, 0.6703200 | -0.5018731, -0.4093654.
  loss_t, m_t = grpo.grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.1, loss_level="token")
  # Token level: -(1.9442095 / 5) = -0.3888419.
  np.testing.assert_allclose(loss_t, -0.3888419, rtol=1e-6)
  loss_s, m_s = grpo.grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.1, loss_level="sequence")
  # Sequence level: -(2.8554479 / 3 + -0.9112385 / 2) / 2 = -(0.9518160 - 0.4556192) / 2 = -0.2480984.
  np.testing.assert_allclose(loss_s, -0.2480984, rtol=1e-6)
  # Two of the five kept tokens have a ratio outside [0.8, 1.2] (1.2214 and 0.6703).
  np.testing.assert_allclose(m_t["clip_fraction"], 0.4, rtol=1e-6)
  np.testing.assert_allclose(m_t["tokens"], 5.0)
  # KL, token level: (0.1487213 + 0.0187308) / 5; sequence level: (0.1487213 / 3 + 0.0187308 / 2) / 2.
  np.testing.assert_allclose(m_t["kl"], 0.0334904, rtol=1e-5)
  np.testing.assert_allclose(m_s["kl"], 0.0294696, rtol=1e-5)
  # The padded token's values never count: changing them changes nothing.
  changed = [a.at[1, 2].set(7.0) for a in (logp, old, ref)]
  again, _ = grpo.grpo_loss(*changed, adv, mask, clip_eps=0.2, kl_coef=0.1, loss_level="sequence")
  np.testing.assert_allclose(again, loss_s, rtol=1e-7)


def test_grpo_loss_gradient_signs_and_values():
  logp, old, ref, adv, mask = _arrays()
  grad = jax.grad(lambda lp: grpo.grpo_loss(lp, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.1,
                                            loss_level="token")[0])(logp)
  # Positive-advantage row: descending the loss raises its tokens' log-probs (negative gradient), except the
  # clipped first token (ratio 1.2214 > 1.2, A > 0: no surrogate gradient, and k3's is 0 as logp == ref there).
  assert float(grad[0, 0]) == 0.0
  assert float(grad[0, 1]) < 0 and float(grad[0, 2]) < 0
  # Token (0, 2): -(A * rho) / 5 = -0.6703200 / 5 = -0.1340640.
  np.testing.assert_allclose(grad[0, 2], -0.1340640, rtol=1e-5)
  # Negative-advantage row: descending lowers them; the padded token gets nothing.
  assert float(grad[1, 0]) > 0 and float(grad[1, 1]) > 0
  assert float(grad[1, 2]) == 0.0


def test_kl_penalty_pulls_towards_the_reference_when_advantages_are_zero():
  logp, old, ref, _, mask = _arrays()
  grad = jax.grad(lambda lp: grpo.grpo_loss(lp, old, ref, jnp.zeros(2), mask, clip_eps=0.2, kl_coef=1.0,
                                            loss_level="token")[0])(logp)
  # Token (0, 1): logp -2.0 below ref -1.5 -> descending raises it: gradient (1 - e^0.5) / 5 = -0.1297443.
  np.testing.assert_allclose(grad[0, 1], -0.1297443, rtol=1e-5)
  # Token (1, 0): logp -0.3 above ref -0.5 -> lowers it: (1 - e^-0.2) / 5 = 0.0362538.
  np.testing.assert_allclose(grad[1, 0], 0.0362538, rtol=1e-5)


def test_grpo_loss_refuses_unknown_levels_and_shapes():
  logp, old, ref, adv, mask = _arrays()
  with pytest.raises(ValueError, match="loss_level"):
    grpo.grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.0, loss_level="batch")
  with pytest.raises(AssertionError):
    grpo.grpo_loss(logp, old[:, :2], ref, adv, mask, clip_eps=0.2, kl_coef=0.0)
  with pytest.raises(AssertionError):
    grpo.grpo_loss(logp, old, ref, jnp.zeros(3), mask, clip_eps=0.2, kl_coef=0.0)


def test_byte_tokenizer_round_trip_and_template():
  tok = ByteTokenizer()
  ids = tok.encode("héllo")
  assert ids == [104, 195, 169, 108, 108, 111]
  assert tok.decode(ids + [tok.bos_id, *tok.eos_ids, tok.pad_id]) == "héllo"
  assert (tok.vocab_size, tok.bos_id, tok.eos_ids, tok.pad_id) == (259, 256, (257,), 258)
  text = tok.apply_chat_template([{"role": "user", "content": "2+3?"}])
  assert text == "user: 2+3?\nassistant:"
  assert tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=False) == "user: x\n"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([300])
