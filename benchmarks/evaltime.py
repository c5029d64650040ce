"""`melo eval` wall time, this checkout against an earlier one, on the same model, edits and machine.

    git worktree add /tmp/melo-before 9374f65        # the commit to compare with
    python benchmarks/evaltime.py --before /tmp/melo-before --model smollm2 --n 100

Each checkout makes its own bundle of the same N CounterFact edits (with its own defaults), then
`melo eval --mode generate` scores N edits, N paraphrases and N unrelated prompts (the records'
locality prompts); the two evals run as fresh processes, interleaved, `--reps` times, one torch thread
each (OMP_NUM_THREADS=1). A checkout that cannot read GGUF gets the same weights as the Hugging Face
folder melo converted the GGUF into.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def melo(checkout: Path, *args: str) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "melo_cli.cli", "-q", *args], env=env, capture_output=True, text=True,
                          cwd=checkout)  # `python -m` puts the working directory first on sys.path
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: melo {' '.join(args[:2])} failed: {done.stderr[-1500:]}")
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="an earlier melo checkout")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    model = common.model_path(args.model)
    from melo_cli.model import backbones
    folder, _ = backbones.readable_source(model)  # the converted folder, for a checkout without GGUF
    records = common.counterfact(args.n)
    tmp = Path(tempfile.mkdtemp())
    edits, holdout = tmp / "edits.jsonl", tmp / "holdout.jsonl"
    edits.write_text("".join(json.dumps({k: r[k] for k in ("id", "input", "target", "rephrases", "subject")}) + "\n"
                             for r in records))
    holdout.write_text("".join(json.dumps({"input": r["locality"]}) + "\n" for r in records))
    checkouts = {"before": args.before.resolve(), "after": common.ROOT}
    bases = {"before": folder, "after": model}
    for name, checkout in checkouts.items():
        melo(checkout, "edit", bases[name], str(edits), "-o", str(tmp / name), "--batch-size", "10")
    times: dict[str, list[float]] = {name: [] for name in checkouts}
    scores = {}
    for _ in range(args.reps):
        for name, checkout in checkouts.items():
            seconds, out = melo(checkout, "eval", "--bundle", str(tmp / name), "--edits", str(edits), "--locality",
                                str(holdout), "--mode", "generate", "--format", "json")
            times[name].append(seconds)
            scores[name] = json.loads(out)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    rows = [[name, statistics.median(times[name]), scores[name]["edit_success"], scores[name]["generality"],
             scores[name]["locality"]] for name in checkouts]
    env = common.environment("cpu")
    markdown = (f"`melo eval --mode generate`: {args.n} edits + {args.n} paraphrases + {args.n} unrelated prompts, "
                f"{args.model}, one thread, medians of {args.reps}; before = {args.before.name} "
                f"(each checkout's own bundle and defaults). Before / after: {before / after:.2f}x.\n\n"
                + common.table(["checkout", "eval wall s", "ES", "generality", "locality"], rows))
    common.write("evaltime", args.tag or f"{args.model}-n{args.n}", env, {"times": times, "scores": scores}, markdown,
                 args.out)


if __name__ == "__main__":
    main()
