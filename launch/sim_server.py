r"""Serves the simulated LLM pool over HTTP in the OpenAI wire format.

  python -m launch.sim_server --port 8000
  python -m launch.sim_server --port 0 --latency_s 0.5 --fault_rate_429 0.05
  SIM_KEY=secret python -m launch.sim_server --api_key_env SIM_KEY   # a wrong key gets 401
  python -m launch.sim_server --strict_models GPT-5-nano,GPT-5-mini  # 400 to max_tokens / temperature != 1

Point any OpenAI-compatible client at ``http://HOST:PORT/v1``. The server knows
the problems of ``--task`` (a ``module:Class`` Task; default the arithmetic
fixture) loaded with ``--split`` and ``--load_kwargs``; a request about another
question gets a 400. With ``--port 0`` it picks a free port; the first line it
prints gives the address.
"""

from __future__ import annotations

import asyncio
import importlib
import json

from absl import app
from absl import flags

from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.llm import sim_http
from hieramas_jax.llm.sim_http import FAULT_KINDS, FaultConfig, SimServer, serve

_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (loopback by default).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to bind; 0 picks a free one.")
_TASK = flags.DEFINE_string("task", "hieramas_jax.llm.sim_task:ArithmeticTask",
                            "The Task class as module:Class; its problems are the ones the server can answer.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of the task to load.")
_LOAD_KWARGS = flags.DEFINE_string("load_kwargs", "{}", "JSON object of keyword arguments for task.load.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the simulated world (skills and every call's RNG).")
_LATENCY = flags.DEFINE_float("latency_s", None,
                              "Fixed seconds per answer; unset: each model's simulated latency x latency_scale.")
_JITTER = flags.DEFINE_float("latency_jitter_s", 0.0, "Uniform +/- jitter on a fixed latency.")
_SCALE = flags.DEFINE_float("latency_scale", 1.0, "Factor on simulated latencies (when --latency_s is unset).")
_API_KEY_ENV = flags.DEFINE_string("api_key_env", None,
                                   "If set, requests must carry the key held by this environment variable.")
_RATE_429 = flags.DEFINE_float("fault_rate_429", 0.0, "Chance per request of a 429 with Retry-After.")
_RATE_500 = flags.DEFINE_float("fault_rate_500", 0.0, "Chance per request of a 500.")
_RATE_STALL = flags.DEFINE_float("fault_rate_stall", 0.0, "Chance per request of a stall of --stall_s.")
_RATE_MALFORMED = flags.DEFINE_float("fault_rate_malformed", 0.0, "Chance per request of a malformed JSON body.")
_RATE_EMPTY = flags.DEFINE_float("fault_rate_empty", 0.0, "Chance per request of an empty 'choices' list.")
_RATE_LENGTH = flags.DEFINE_float("fault_rate_length", 0.0,
                                  "Chance per request of an answer cut in half with finish_reason 'length'.")
_FIRST_ATTEMPTS = flags.DEFINE_integer("fault_first_attempts", 0,
                                       "The first N attempts of every distinct request fail with --fault_first_kind.")
_FIRST_KIND = flags.DEFINE_enum("fault_first_kind", "429", list(FAULT_KINDS), "Fault of --fault_first_attempts.")
_MODEL_FAULTS = flags.DEFINE_string("fault_models", "{}",
                                    'JSON object model -> fault kind applied to every request, e.g. {"X": "500"}.')
_RETRY_AFTER = flags.DEFINE_float("retry_after_s", 0.05, "Retry-After of injected 429s.")
_STALL = flags.DEFINE_float("stall_s", 30.0, "Seconds a stalled request hangs.")
_STRICT_MODELS = flags.DEFINE_list(
    "strict_models", [], "Models that answer max_tokens and temperature != 1 with HTTP 400 in OpenAI's words, as "
    "OpenAI's GPT-5 family and o-series do (comma separated served names).")
_PROBE_FAULTS = flags.DEFINE_bool(
    "fault_probes", False, "Preflight probes meet the rate and first-attempt faults too (not only --fault_models).")


def _load_task(spec: str):
  module_name, _, class_name = spec.partition(":")
  if not class_name:
    raise app.UsageError(f"--task={spec!r}: give it as module:Class")
  return getattr(importlib.import_module(module_name), class_name)()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  task = _load_task(_TASK.value)
  problems = task.load(_SPLIT.value, **json.loads(_LOAD_KWARGS.value))
  backend = SimulatedBackend(default_world(seed=_SEED.value), task, problems)
  faults = FaultConfig(
      rate_429=_RATE_429.value, rate_500=_RATE_500.value, rate_stall=_RATE_STALL.value,
      rate_malformed=_RATE_MALFORMED.value, rate_empty=_RATE_EMPTY.value, rate_length=_RATE_LENGTH.value,
      first_attempts=_FIRST_ATTEMPTS.value,
      first_kind=_FIRST_KIND.value, model_faults=json.loads(_MODEL_FAULTS.value), retry_after_s=_RETRY_AFTER.value,
      stall_s=_STALL.value, seed=_SEED.value, probe_faults=_PROBE_FAULTS.value)
  try:
    api_key = sim_http.api_key_from_env(_API_KEY_ENV.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    server = SimServer(backend, latency_s=_LATENCY.value, latency_jitter_s=_JITTER.value,
                       latency_scale=_SCALE.value, faults=faults, api_key=api_key, strict_models=_STRICT_MODELS.value)
  except ValueError as e:
    raise app.UsageError(f"--strict_models: {e}") from None
  print(f"sim_server: {len(problems)} problems of {task.name!r}, models {sorted(backend.known_models())}"
        + (f", strict {sorted(server.strict_models)}" if server.strict_models else ""), flush=True)
  try:
    import uvloop  # pylint: disable=g-import-not-at-top
    uvloop.install()
  except ImportError:
    pass
  asyncio.run(serve(server, _HOST.value, _PORT.value))


if __name__ == "__main__":
  app.run(main)
