"""Trains and evaluates the presets on several simulator seeds and writes README's results block.

  python tools/readme_results.py                                   # default, paper_gpt, paper_qwen x seeds 0,1,2
  python tools/readme_results.py --presets=paper_gpt --seeds=0 --no-write
  python tools/readme_results.py --presets=default:0,paper_gpt,paper_qwen     # the default on seed 0 only

For each (preset, seed) it runs, unless ``<root>/<preset>_s<seed>/eval/results.json`` exists,

  python -m launch.train    --config=configs/<task>.py[:preset] --workdir=<root>/<preset>_s<seed> \
      --config.seed=<seed> --config.llm.sim_seed=<seed>
  python -m launch.evaluate --config=(same) --workdir=(same)

then writes, between the markers ``<!-- results:begin -->`` and ``<!-- results:end -->`` of README.md, one
table per preset and one sentence per seed that says whether HieraMAS beats the decision model alone, every
single model and every named method. "Beats" and "loses" need a difference of accuracy beyond two standard
errors (of the difference of two independent proportions over the gradable queries; the same queries are
used by every method, so this is conservative); anything closer is a tie. No figure in that block is
written by hand: re-run this script after any change that moves them.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SIGNIFICANCE = 2.0  # standard errors of the difference needed to call a winner


def config_arg(task: str, preset: str) -> str:
  path = f"configs/{task}.py"
  return path if preset == "default" else f"{path}:{preset}"


def run_one(task: str, preset: str, seed: int, workdir: pathlib.Path) -> dict:
  """Trains and evaluates one (preset, seed) unless its results exist; returns results.json."""
  results = workdir / "eval" / "results.json"
  if not results.exists():
    common = [f"--config={config_arg(task, preset)}", f"--workdir={workdir}", f"--config.seed={seed}",
              f"--config.llm.sim_seed={seed}"]
    for module in ("launch.train", "launch.evaluate"):
      start = time.time()
      print(f"[{preset} seed {seed}] python -m {module} {' '.join(common)}", flush=True)
      done = subprocess.run([sys.executable, "-m", module, *common], cwd=ROOT, capture_output=True, text=True)
      if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"readme_results: {module} failed for {preset} seed {seed}: {tail[0]}")
      print(f"[{preset} seed {seed}] {module} took {time.time() - start:.0f} s", flush=True)
  return json.loads(results.read_text())


def standard_error(row: dict) -> float:
  graded = row["queries"] - row["failed"]
  p = row["accuracy"]
  if not graded or p is None:
    return float("nan")
  return math.sqrt(max(p * (1 - p), 0.0) / graded)


def verdict(a: dict, b: dict) -> tuple[str, float, float]:
  """'beats' / 'loses to' / 'ties with' for a against b, the difference and its standard error."""
  diff = a["accuracy"] - b["accuracy"]
  se = math.hypot(standard_error(a), standard_error(b))
  if diff > SIGNIFICANCE * se:
    return "beats", diff, se
  if diff < -SIGNIFICANCE * se:
    return "loses to", diff, se
  return "ties with", diff, se


def rows_by_method(results: dict) -> dict[str, dict]:
  return {r["method"]: r for r in results["rows"] if r.get("accuracy") is not None}


def seed_sentence(preset: str, seed: int, results: dict, decision_model: str) -> str:
  rows = rows_by_method(results)
  h = rows["hieramas"]
  parts = [f"**{preset}, seed {seed}**: HieraMAS {h['accuracy']:.3f} ± {standard_error(h):.3f} at "
           f"${h['cost_usd']:.5f} per query ({h['calls']:.1f} calls, {h['failed']} failed)."]
  alone = rows.get(f"single[{decision_model}]") or rows.get("single")
  if alone is not None:
    word, diff, se = verdict(h, alone)
    parts.append(f"Against the decision model alone ({decision_model}, {alone['accuracy']:.3f} at "
                 f"${alone['cost_usd']:.5f}) it {word} it ({diff:+.3f} ± {se:.3f}).")
  groups: dict[str, list[str]] = {"beats": [], "ties with": [], "loses to": []}
  for name, row in rows.items():
    if name.startswith("hieramas") or name == "single":
      continue
    word, diff, se = verdict(h, row)
    groups[word].append(f"{name} ({row['accuracy']:.3f}, {diff:+.3f} ± {se:.3f})")
  for word in ("beats", "ties with", "loses to"):
    if groups[word]:
      parts.append(f"It {word}: {', '.join(groups[word])}.")
  front = results.get("pareto_front", [])
  parts.append(f"On the accuracy-cost Pareto front: {'yes' if 'hieramas' in front else 'no'}.")
  return " ".join(parts)


def preset_table(preset: str, per_seed: dict[int, dict]) -> list[str]:
  seeds = sorted(per_seed)
  methods: list[str] = []
  for s in seeds:
    for m in rows_by_method(per_seed[s]):
      if m not in methods:
        methods.append(m)
  head = "| method | " + " | ".join(f"seed {s}: accuracy ± se, $/query" for s in seeds) + " |"
  lines = [head, "|---" * (len(seeds) + 1) + "|"]
  for m in methods:
    cells = []
    for s in seeds:
      row = rows_by_method(per_seed[s]).get(m)
      cells.append("" if row is None else
                   f"{row['accuracy']:.3f} ± {standard_error(row):.3f}, {row['cost_usd']:.5f}")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines


def decision_model_of(task: str, preset: str) -> str:
  sys.path.insert(0, str(ROOT))
  from hieramas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(ROOT / "configs" / f"{task}.py", None if preset == "default" else preset)
  return config.llm.decision_model


def block(task: str, per_preset: dict[str, dict[int, dict]]) -> str:
  out = [BEGIN, "",
         f"Generated by `python tools/readme_results.py` on {time.strftime('%Y-%m-%d')} ({task}, synthetic "
         "problems, simulated pool; every method on the same test queries; ± is one standard error; "
         f"'beats'/'loses to' need a difference beyond {SIGNIFICANCE:g} standard errors).", ""]
  for preset, per_seed in per_preset.items():
    decision = decision_model_of(task, preset)
    out.append(f"#### `{preset}` (decision model {decision})")
    out.append("")
    out.extend(preset_table(preset, per_seed))
    out.append("")
    for seed in sorted(per_seed):
      out.append("- " + seed_sentence(preset, seed, per_seed[seed], decision))
    out.append("")
  out.append(END)
  return "\n".join(out)


def write_readme(text: str, readme: pathlib.Path) -> None:
  current = readme.read_text()
  if BEGIN not in current or END not in current:
    raise SystemExit(f"readme_results: {readme} has no {BEGIN} ... {END} block; add the two markers where the "
                     "results belong")
  head, rest = current.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  readme.write_text(head + text + tail)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="math")
  parser.add_argument("--presets", default="default,paper_gpt,paper_qwen")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--root", default="runs/readme", help="where the runs go (reused when present)")
  parser.add_argument("--readme", default=str(ROOT / "README.md"))
  parser.add_argument("--no-write", action="store_true", help="print the block instead of writing README")
  args = parser.parse_args()
  root = (ROOT / args.root).resolve()
  per_preset: dict[str, dict[int, dict]] = {}
  for token in [p for p in args.presets.split(",") if p]:
    preset, _, own_seeds = token.partition(":")  # 'default:0' runs the default on seed 0 only
    per_preset[preset] = {}
    for seed in [int(s) for s in (own_seeds.replace("+", ",") or args.seeds).split(",") if s]:
      per_preset[preset][seed] = run_one(args.task, preset, seed, root / args.task / f"{preset}_s{seed}")
  text = block(args.task, per_preset)
  if args.no_write:
    print(text)
  else:
    write_readme(text, pathlib.Path(args.readme))
    print(f"wrote the results block of {args.readme}")


if __name__ == "__main__":
  main()
