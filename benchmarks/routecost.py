"""What `melo route` saves: deciding where prompts go vs generating for them, on a real model.

    python benchmarks/routecost.py --model smollm2 --n 100

One bundle of N CounterFact edits per key source (sentence-encoder keys, the default, and base-model
keys); N prompts (half edit prompts, half their locality prompts). Timed, interleaved over --reps,
in one process with torch pinned to --threads: opening for routing (encoder keys: the encoder only,
no base model) vs opening the full model, and routing N prompts vs generating 20 tokens for them.
Ratios are taken within each rep; the table gives medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from melo_cli import MeloModel
from melo_cli.jobs.open import router_for  # noqa: E402
from melo_cli.options import Loading  # noqa: E402


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = common.model_path(args.model)
    records = common.counterfact(args.n)
    prompts = [r["input"] for r in records[: args.n // 2]] + [r["locality"] for r in records[: args.n - args.n // 2]]
    work = Path(tempfile.mkdtemp(prefix="melo-routecost-"))  # the bundles: scratch, removed at the end
    rows, results = [], {}
    for source in ("encoder", "base"):
        bundle = work / source
        model = MeloModel.from_pretrained(base, device="cpu", **({} if source == "encoder" else {"key_source": "base"}))
        model.edit([{k: r[k] for k in ("input", "target", "subject")} for r in records], batch_size=10)
        model.save_pretrained(bundle, overwrite=True)
        del model
        reps = []
        for _ in range(args.reps):
            (_, route_texts), open_route = timed(lambda: router_for(bundle, None, Loading(device="cpu")))
            routes, route_s = timed(lambda: route_texts(prompts))
            full, open_full = timed(lambda: MeloModel.from_pretrained(bundle=bundle, device="cpu"))
            texts, generate_s = timed(lambda: full.generate(prompts, max_new_tokens=20))
            assert [r.block for r in routes] == [r.block for r in full.route(prompts)]
            reps.append({"open_route": open_route, "route": route_s, "open_full": open_full, "generate": generate_s})
            del full
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
        ratio_run = statistics.median(r["generate"] / r["route"] for r in reps)
        ratio_open = statistics.median(r["open_full"] / r["open_route"] for r in reps)
        results[source] = {"reps": reps, "median": med, "generate_over_route": ratio_run,
                           "open_full_over_open_route": ratio_open, "routed": sum(r.routed for r in routes)}
        rows.append([f"{source} keys", med["open_route"], med["open_full"], ratio_open, med["route"],
                     med["generate"], ratio_run])
        print(source, results[source]["median"], ratio_run, ratio_open, file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    env = common.environment("cpu")
    env["threads"] = args.threads
    markdown = (f"{args.model}, bundle of {args.n} CounterFact edits, {len(prompts)} prompts (half edit prompts, half "
                f"unrelated), {args.reps} interleaved reps, {args.threads} torch thread(s); seconds are medians, "
                f"ratios the median of per-rep ratios.\n\n" + common.table(
                    ["keys", "open for route (s)", "open full model (s)", "x", f"route {len(prompts)} (s)",
                     f"generate 20 tokens x {len(prompts)} (s)", "x"], rows))
    common.write("routecost", args.tag or f"{args.model}-n{args.n}", env, {"model": args.model, "n": args.n,
                                                                           "results": results}, markdown, args.out)


if __name__ == "__main__":
    main()
