"""The Flax BERT building blocks on a tiny random model (no model package needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hieramas_jax.encoders import bert
from hieramas_jax.encoders import sentence_transformer

TINY = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=32, max_position_embeddings=40, layer_norm_eps=1e-12)


def tiny_hf_weights(config: bert.BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights with Hugging Face names and PyTorch ([out, in]) layouts."""
  rng = np.random.default_rng(seed)
  h, f = config.hidden_size, config.intermediate_size
  w = lambda *shape: rng.normal(0, 0.2, shape).astype(np.float32)
  tensors = {
      "embeddings.word_embeddings.weight": w(config.vocab_size, h),
      "embeddings.position_embeddings.weight": w(config.max_position_embeddings, h),
      "embeddings.token_type_embeddings.weight": w(config.type_vocab_size, h),
      "embeddings.LayerNorm.weight": 1 + w(h),
      "embeddings.LayerNorm.bias": w(h),
  }
  for i in range(config.num_hidden_layers):
    p = f"encoder.layer.{i}."
    for name, shape in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                        "attention.self.value": (h, h), "attention.output.dense": (h, h),
                        "intermediate.dense": (f, h), "output.dense": (h, f)}.items():
      tensors[p + name + ".weight"] = w(*shape)
      tensors[p + name + ".bias"] = w(shape[0])
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      tensors[p + name + ".weight"] = 1 + w(h)
      tensors[p + name + ".bias"] = w(h)
  return tensors


def numpy_bert(tensors: dict[str, np.ndarray], ids: np.ndarray,
               config: bert.BertConfig) -> np.ndarray:
  """A plain numpy forward pass of one unpadded sequence, written from the BERT paper."""
  from math import erf, sqrt  # pylint: disable=import-outside-toplevel
  gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))
  t = lambda name: tensors[name].astype(np.float64)

  def norm(x, prefix):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    scaled = (x - mu) / np.sqrt(var + config.layer_norm_eps)
    return scaled * t(prefix + ".weight") + t(prefix + ".bias")

  def dense(x, prefix):
    return x @ t(prefix + ".weight").T + t(prefix + ".bias")

  x = (t("embeddings.word_embeddings.weight")[ids] +
       t("embeddings.position_embeddings.weight")[:len(ids)] +
       t("embeddings.token_type_embeddings.weight")[0])
  x = norm(x, "embeddings.LayerNorm")
  heads, d = config.num_attention_heads, config.hidden_size // config.num_attention_heads
  for i in range(config.num_hidden_layers):
    p = f"encoder.layer.{i}."
    q, k, v = (dense(x, p + f"attention.self.{n}").reshape(len(ids), heads, d).transpose(1, 0, 2)
               for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = (weights @ v).transpose(1, 0, 2).reshape(len(ids), -1)
    x = norm(x + dense(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    x = norm(x + dense(gelu(dense(x, p + "intermediate.dense")), p + "output.dense"),
             p + "output.LayerNorm")
  return x


@pytest.fixture(scope="module")
def tiny_model() -> tuple[bert.BertModel, dict[str, np.ndarray]]:
  tensors = tiny_hf_weights(TINY)
  model = bert.abstract_bert(TINY)
  bert.load_hf_weights(model, {"bert." + k: v for k, v in tensors.items()})  # prefix is stripped
  return model, tensors


def test_forward_matches_numpy_and_ignores_padding(tiny_model):
  model, tensors = tiny_model
  sequences = [np.array([2, 7, 9, 3]), np.array([2, 11, 5, 6, 8, 12, 3])]
  ids = np.zeros((2, 10), dtype=np.int32)
  mask = np.zeros((2, 10), dtype=np.int32)
  for row, seq in enumerate(sequences):
    ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
  hidden = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
  for row, seq in enumerate(sequences):
    expected = numpy_bert(tensors, seq, TINY)
    np.testing.assert_allclose(hidden[row, :len(seq)], expected, atol=2e-5)


def test_pooling_modes_use_real_tokens_only():
  rng = np.random.default_rng(1)
  hidden = rng.normal(size=(2, 5, 3)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int32)
  hidden[0, 3:] = 100.0  # padding must not leak into any mode
  out = np.asarray(bert.pool(jnp.asarray(hidden), jnp.asarray(mask), bert.POOLING_MODES))
  real = hidden[0, :3]
  expected0 = np.concatenate([real[0], real.max(0), real.mean(0), real.sum(0) / np.sqrt(3)])
  np.testing.assert_allclose(out[0], expected0, rtol=1e-6, atol=1e-6)
  assert out.shape == (2, 12)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(bert.l2_normalize(out)), axis=1), 1.0,
                             rtol=1e-6)


def test_loading_rejects_missing_or_misshapen_weights():
  tensors = tiny_hf_weights(TINY)
  del tensors["encoder.layer.1.output.dense.bias"]
  tensors["embeddings.word_embeddings.weight"] = np.zeros((49, 16), np.float32)
  with pytest.raises(ValueError, match=r"word_embeddings.weight has shape \(49, 16\).*"
                     r"missing encoder.layer.1.output.dense.bias"):
    bert.load_hf_weights(bert.abstract_bert(TINY), tensors)


def test_config_rejects_what_it_cannot_run():
  base = dict(vocab_size=5, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=8)
  with pytest.raises(ValueError, match="model_type='roberta'"):
    bert.BertConfig.from_dict(dict(base, model_type="roberta"))
  with pytest.raises(ValueError, match="hidden_act"):
    bert.BertConfig.from_dict(dict(base, hidden_act="mish"))
  with pytest.raises(ValueError, match="multiple"):
    bert.BertConfig.from_dict(dict(base, num_attention_heads=3))


def test_pooling_config_forms():
  parse = sentence_transformer._pooling_modes  # pylint: disable=protected-access
  assert parse({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, "x") == (
      "cls", "mean")
  assert parse({"pooling_mode": "mean_sqrt_len_tokens"}, "x") == ("mean_sqrt_len",)
  with pytest.raises(ValueError, match="lasttoken"):
    parse({"pooling_mode_lasttoken": True}, "x")
  assert sentence_transformer._length_buckets(256, 16) == (  # pylint: disable=protected-access
      16, 24, 32, 48, 64, 96, 128, 192, 256)
