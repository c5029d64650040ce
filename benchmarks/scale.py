"""10,000 sequential edits on SmolLM2: what grows with the number of edits, and how fast.

    python benchmarks/scale.py --n 10000                       # CounterFact's 10,000 records, batches of 10

One `MeloModel.edit` over all records (melo's defaults, no subject fields: the entity is found in each
input), batches of 10, torch pinned to one thread. Measured in one run:
- retention at 1k, 2.5k, 5k and 10k edits (teacher-forced ES and generality over every edit so far that
  a later record of the same input has not corrected);
- at the end, under generation: ES, generality, locality (all, and the prompts that do not restate an edit
  of the set), and fluency on a sample of records (40 new tokens, melo_cli/eval/fluency.py);
- seconds per edit in the first and the last 1,000 edits (their ratio: does editing slow as the bundle grows?);
- bundle bytes; `melo_cli.bundle.load` time (read, hash, validate, index check; median of 3);
- memory at inference: peak RSS of a fresh process that loads the base model alone, or with the bundle, and
  generates (this process's RSS after 10,000 edits says more about the allocator than about the bundle);
- generate overhead: 16 new tokens for 100 unrelated prompts (locality prompts the router sends nowhere)
  with the bundle vs the bare model, in batches of 25, each batch timed both ways in alternating order, 4
  rounds: the median of the 16 paired ratios (wall and CPU). Back-to-back runs of one batch differ by up to
  15% on this shared machine, with no bundle at all; a median of 3 whole runs each read 1.07x on the
  10,000-edit bundle, the paired median 1.026x on the same edits (benchmarks/NOTES.md);
- `evaluate` wall time over every live edit and rephrase (generate mode, fluency off).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from melo_cli import MeloModel, bundle as bundle_io  # noqa: E402
from melo_cli.edits.triage import triage  # noqa: E402
from melo_cli.inputs import as_edits  # noqa: E402
from melo_cli.eval.metrics import produces  # noqa: E402
from melo_cli.eval.fluency import mean_entropy, repeats  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def inference_rss_mb(model_path: str, bundle: Path | None, prompt: str, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that opens the base model (with `bundle`, if given) and generates."""
    code = ("import torch; from pathlib import Path; from melo_cli import MeloModel; "
            f"torch.set_num_threads({threads}); "
            f"m = MeloModel.from_pretrained({model_path!r}, bundle={str(bundle) if bundle else None!r}, device='cpu'); "
            f"m.generate([{prompt!r}], max_new_tokens=8); "
            "print([l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def paired_overhead(model: MeloModel, prompts: list[str], tokens: int = 16, rounds: int = 4) -> dict:
    """Routed / bare generate time: each batch of 25 timed both ways back to back, the order alternating;
    medians of the paired ratios, wall and CPU (see the module docstring for why paired)."""
    wall, cpu = [], []
    batches = [prompts[start:start + 25] for start in range(0, len(prompts), 25)]
    for route in (True, False):  # warm both paths
        generate(model, batches[0], tokens, route=route)
    for turn in range(rounds * len(batches)):
        batch, timed = batches[turn % len(batches)], {}
        for route in ((False, True) if turn % 2 == 0 else (True, False)):
            w, c = time.perf_counter(), time.process_time()
            generate(model, batch, tokens, route=route)
            timed[route] = (time.perf_counter() - w, time.process_time() - c)
        wall.append(timed[True][0] / timed[False][0])
        cpu.append(timed[True][1] / timed[False][1])
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu), "wall_pairs": wall, "cpu_pairs": cpu}


def tf(model: MeloModel, inputs: list[str], targets: list[str], route: bool = True) -> list[bool]:
    hits = []
    for start in range(0, len(inputs), 32):
        scores = model.edited.target_scores(inputs[start:start + 32], targets[start:start + 32], route=route)
        hits += [bool(h) for h in scores.hits.tolist()]
    return hits


def generate(model: MeloModel, prompts: list[str], tokens: int, route: bool = True) -> list[str]:
    out = []
    for start in range(0, len(prompts), 25):
        out += [p.text for p in model.edited.predict(prompts[start:start + 25], max_new_tokens=tokens, route=route)]
    return out


def trained_positions(records: list[dict]) -> list[int]:
    """Positions of the records melo trains, in training order, by its own triage (edits/triage.py):
    CounterFact repeats some inputs with another target, and a file's later record corrects the earlier
    one, which is dropped before training, so it is never scored, not even at a checkpoint before its
    correction comes; a repeated (input, target) pair merges into its first record."""
    where = {r["id"]: i for i, r in enumerate(records)}
    kept = triage(as_edits([{"input": r["input"], "target": r["target"], "id": r["id"]} for r in records], "edits"))
    return [where[e.id] for e in kept.kept]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fluency-sample", type=int, default=500, help="records whose edit and rephrase are continued")
    parser.add_argument("--keep-bundle", type=Path, default=None, help="write the bundle here and keep it")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    records = common.counterfact(args.n)
    checkpoints = sorted({c for c in (1000, 2500, 5000, 10000, args.n) if c <= args.n})
    model = MeloModel.from_pretrained(common.model_path(args.model), device="cpu")
    torch.set_num_threads(args.threads)
    rss_base = rss_mb()
    edits = [{"input": r["input"], "target": r["target"], "id": r["id"]} for r in records]
    trained = trained_positions(records)
    batch_seconds, batch_cpu, curve, scoring = [], [], [], [0.0]
    pending = list(checkpoints)

    def on_batch(report) -> None:
        batch_seconds.append(report.seconds)
        batch_cpu.append(report.cpu_seconds)  # this process's CPU time: little moved by other load
        done = sum(batch_edits[:len(batch_seconds)])  # edits trained so far: trained[:done]
        consumed = trained[done - 1] + 1  # records of the file read so far
        final = len(batch_seconds) == len(batch_edits)
        if pending and (consumed >= pending[0] or final):
            while pending and (consumed >= pending[0] or final):
                pending.pop(0)
            started = time.perf_counter()
            seen = [records[i] for i in trained[:done]]
            point = {"edits": consumed, "live": len(seen), "es_tf": float(np.mean(tf(model, [r["input"] for r in seen], [r["target"] for r in seen]))),
                     "gen_tf": float(np.mean(tf(model, [r["rephrases"][0] for r in seen], [r["target"] for r in seen]))),
                     "seconds_so_far": round(sum(batch_seconds), 1)}
            curve.append(point)
            scoring[0] += time.perf_counter() - started
            print(f"after {consumed} records: {point}", file=sys.stderr, flush=True)
        elif len(batch_seconds) % 50 == 0:
            print(f"{consumed} records, {sum(batch_seconds):.0f} s", file=sys.stderr, flush=True)

    batch_edits = [min(args.batch_size, len(trained) - at) for at in range(0, len(trained), args.batch_size)]
    started = time.perf_counter()
    summary = model.edit(edits, batch_size=args.batch_size, on_batch=on_batch, allow_partial=True)
    editing = time.perf_counter() - started - scoring[0]
    span = 1000 // args.batch_size
    thousands = [(at, min(at + span, len(batch_edits))) for at in range(0, len(batch_edits), span)]
    cost = [{"batches": [a, b], "edits": sum(batch_edits[a:b]),
             "seconds_per_edit": sum(batch_seconds[a:b]) / sum(batch_edits[a:b]),
             "cpu_seconds_per_edit": sum(batch_cpu[a:b]) / sum(batch_edits[a:b])} for a, b in thousands]
    first, last = cost[0], cost[-1] if cost[-1]["edits"] >= 500 or len(cost) == 1 else cost[-2]
    result = {"edits": args.n, "unlearned": summary["unlearned_edits"], "editing_seconds": round(editing, 1),
              "seconds_per_edit": editing / args.n, "seconds_per_edit_first_1k": first["seconds_per_edit"],
              "seconds_per_edit_last_1k": last["seconds_per_edit"], "curve": curve, "cost_per_1k": cost,
              "cpu_seconds_per_edit_first_1k": first["cpu_seconds_per_edit"],
              "cpu_seconds_per_edit_last_1k": last["cpu_seconds_per_edit"],
              "batch_seconds": batch_seconds, "batch_cpu_seconds": batch_cpu}
    result["cost_ratio_last_vs_first_1k"] = result["seconds_per_edit_last_1k"] / result["seconds_per_edit_first_1k"]
    result["cpu_cost_ratio_last_vs_first_1k"] = (result["cpu_seconds_per_edit_last_1k"]
                                                 / result["cpu_seconds_per_edit_first_1k"])

    with tempfile.TemporaryDirectory() as tmp:
        out = model.save_pretrained(args.keep_bundle or Path(tmp) / "bundle")
        result["bundle_bytes"] = sum(p.stat().st_size for p in out.iterdir())
        loads = []
        for _ in range(3):
            t = time.perf_counter()
            bundle_io.load(out)
            loads.append(time.perf_counter() - t)
        result["bundle_load_seconds"] = statistics.median(loads)
        result["rss_mb_after_editing"] = rss_mb()
        del model
        path, prompt = common.model_path(args.model), records[0]["locality"]
        result["rss_mb_bare"] = inference_rss_mb(path, None, prompt, args.threads)
        result["rss_mb_bundle"] = inference_rss_mb(path, out, prompt, args.threads)
        t = time.perf_counter()
        model = MeloModel.from_pretrained(bundle=out, device="cpu")
        result["open_seconds"] = time.perf_counter() - t
        torch.set_num_threads(args.threads)
    result["rss_mb_before_editing"] = rss_base

    records = [records[i] for i in trained]
    result["live_edits"] = len(records)
    inputs, targets = [r["input"] for r in records], [r["target"] for r in records]
    rephrases, locality = [r["rephrases"][0] for r in records], [r["locality"] for r in records]
    t = time.perf_counter()
    scores = model.evaluate(mode="generate", fluency_tokens=0,
                            edits=[{"input": r["input"], "target": r["target"], "rephrases": r["rephrases"]}
                                   for r in records])
    result["eval_seconds"] = time.perf_counter() - t
    result["es_gen"], result["gen_gen"] = scores["edit_success"], scores["generality"]
    routes = model.route(locality)
    routed = [i for i, r in enumerate(routes) if r.routed]
    after = generate(model, [locality[i] for i in routed], 8)
    before = generate(model, [locality[i] for i in routed], 8, route=False)
    kept = np.ones(len(locality), bool)
    kept[[i for i, a, b in zip(routed, after, before) if a != b]] = False
    unrelated = ~np.array(common.restating(records), bool)
    result.update(loc_gen=float(kept.mean()), loc_gen_unrelated=float(kept[unrelated].mean()),
                  restating=int((~unrelated).sum()), locality_routed=len(routed))

    sample = random.Random(0).sample(range(len(records)), min(args.fluency_sample, len(records)))
    prompts = [inputs[i] for i in sample] + [rephrases[i] for i in sample]
    goals = [targets[i] for i in sample] * 2
    texts, bare_texts = generate(model, prompts, 40), generate(model, prompts, 40, route=False)
    hit = [i for i, (text, goal) in enumerate(zip(texts, goals)) if produces(text, goal)]
    result["fluency"] = {"sample_records": len(sample), "continuations": len(prompts), "start_with_target": len(hit),
                         "repeats": sum(repeats(texts[i], goals[i]) for i in hit),
                         "entropy_ratio": mean_entropy([texts[i] for i in hit]) / mean_entropy([bare_texts[i] for i in hit])}

    unrelated_prompts = [locality[i] for i in range(len(locality)) if i not in set(routed)][:100]
    overhead = paired_overhead(model, unrelated_prompts)
    result["generate_overhead_unrelated"], result["generate_overhead_unrelated_cpu"] = overhead["wall"], overhead["cpu"]
    result["generate_overhead_pairs"] = overhead

    env = common.environment("cpu")
    env["threads"] = args.threads
    rows = [["edits", args.n], ["live edits (later records of the same input correct earlier ones)", len(records)],
            ["unlearned edits", result["unlearned"]], ["ES (generate)", result["es_gen"]], ["generality (generate)", result["gen_gen"]],
            ["locality (generate)", result["loc_gen"]], ["locality, unrelated", result["loc_gen_unrelated"]],
            ["fluency: entropy edited / bare (sample)", result["fluency"]["entropy_ratio"]],
            ["fluency: repeated targets", result["fluency"]["repeats"]],
            ["seconds per edit (all)", result["seconds_per_edit"]],
            ["seconds per edit, last 1k / first 1k (wall)", result["cost_ratio_last_vs_first_1k"]],
            ["CPU seconds per edit, last 1k / first 1k (this process)", result["cpu_cost_ratio_last_vs_first_1k"]],
            ["bundle MB", result["bundle_bytes"] / 1e6], ["bundle load s (median of 3)", result["bundle_load_seconds"]],
            ["peak RSS MB at inference (fresh process), bare model / with the bundle",
             f"{result['rss_mb_bare']:.0f} / {result['rss_mb_bundle']:.0f}"],
            ["generate overhead, unrelated prompts (median paired ratio, wall / CPU)",
             f"{result['generate_overhead_unrelated']:.3f} / {result['generate_overhead_unrelated_cpu']:.3f}"],
            ["eval seconds (generate mode, every edit and rephrase)", result["eval_seconds"]]]
    markdown = (f"{args.n} sequential CounterFact edits on {args.model}, batches of {args.batch_size}, melo's defaults "
                f"without subject fields, {args.threads} torch thread(s).\n\n" + common.table(["measure", "value"], rows)
                + "\n\nCost of each 1,000 trained edits in turn (seconds per edit; CPU: this process's, all threads):\n\n"
                + common.table(["trained edits", "s/edit (wall)", "CPU s/edit"],
                               [[f"{sum(batch_edits[:c['batches'][0]]) + 1}-{sum(batch_edits[:c['batches'][1]])}",
                                 c["seconds_per_edit"], c["cpu_seconds_per_edit"]] for c in cost])
                + "\n\nRetention (teacher-forced, every live edit so far):\n\n"
                + common.table(["edits", "live", "ES tf", "generality tf", "editing s so far"],
                               [[p["edits"], p["live"], p["es_tf"], p["gen_tf"], p["seconds_so_far"]] for p in curve]))
    common.write("scale", args.tag or f"{args.model}-n{args.n}", env, {"results": result}, markdown, args.out)


if __name__ == "__main__":
    main()
