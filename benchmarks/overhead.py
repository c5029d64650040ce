"""Latency of generate and eval with a bundle of N edits against the bare base model, on the same inputs.

    python benchmarks/overhead.py                  # a 1,000-edit bundle (CounterFact), 20 interleaved reps
    python benchmarks/overhead.py --model smollm2 --bundle /tmp/smollm2-1000   # built once, then reused
    python benchmarks/overhead.py --model smollm2 --n 100 --synthetic-clusters 10000   # the router at 10k

`--synthetic-clusters N` adds N clusters to the loaded bundle without training them: each centred on the
key of another CounterFact prompt moved by a random offset of a tenth of the init radius, with an entity of its
own and a zero block. They cost the router what N real edits would (search, entity gate) in minutes
instead of the hours 10,000 trained edits take; their blocks are zero, so only the unrelated rows (routed
nowhere) are read as the cost of N edits.

The bare model is a separately loaded Hugging Face model with no wrappers and no hooks, driven from
text to text exactly as melo is (tokenize, forward or generate, decode). Each
repetition times the bare model and the edited one back to back on the same batch, so machine noise
hits both; we report the median of the per-repetition ratios and its spread (25th-75th percentile).
Two input sets: unrelated prompts (outside every radius, the common case in production) and the
edits' own prompts (every row routed to a LoRA block).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from melo_cli import MeloModel, tasks
from melo_cli.model import backbones  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def add_synthetic_clusters(edited, n: int, offset: int) -> None:
    """n untrained clusters near the keys of CounterFact prompts from `offset` on (see the docstring)."""
    router, rng = edited.router, np.random.default_rng(0)
    prompts = [r["input"] for r in common.counterfact(min(n, 2000), offset=offset)]
    keys = edited.keys(prompts)
    first = edited.n_blocks
    for layer in edited.layers.values():
        layer.ensure_blocks(first + n)
    for i in range(n):
        step = rng.standard_normal(keys.shape[1]).astype(np.float32)
        key = keys[i % len(keys)] + step * (0.1 * router.init_radius / np.linalg.norm(step))
        cluster = router.new_cluster(key, f"synthetic target {i}", first + i, router.init_radius)
        router.add_member(key, cluster, 10**6 + i, (f"Synthetic Entity{i}", (f"Entity{i}",)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stories260K", help="stories260K, smollm2 or gemma3-270m")
    parser.add_argument("--n", type=int, default=1000, help="edits in the bundle")
    parser.add_argument("--bundle", type=Path, default=None, help="keep the bundle here (reused if it exists)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pinned for timing)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--synthetic-clusters", type=int, default=0, help="untrained clusters added to the router")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    env = common.environment(args.device)
    env["threads"] = args.threads
    model = common.model_path(args.model)
    records = common.counterfact(args.n)
    build_seconds = None
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or Path(tmp) / "bundle"
        if not (bundle / "manifest.yaml").exists():
            started = time.perf_counter()
            fresh = MeloModel.from_pretrained(model, device=args.device)
            fresh.edit([{k: r[k] for k in ("input", "target", "subject")} for r in records], batch_size=10)
            fresh.save_pretrained(bundle)
            build_seconds = time.perf_counter() - started
            del fresh
        edited = MeloModel.from_pretrained(bundle=bundle, device=args.device).edited
    if args.synthetic_clusters:
        add_synthetic_clusters(edited, args.synthetic_clusters, offset=args.n + args.batch)
    torch.set_num_threads(args.threads)
    bare = backbones.load(model, device=args.device)
    torch.set_num_threads(args.threads)
    sets = {"unrelated": [r["locality"] for r in common.counterfact(args.batch, offset=args.n)],
            "edited": [r["input"] for r in records[:args.batch]]}
    results = {}
    for name, prompts in sets.items():
        targets = [r["target"] for r in records[:args.batch]]

        @torch.no_grad()
        def bare_generate():  # from text to text, as melo generate does: tokenize, generate, decode
            enc = tasks.encode(bare, prompts).to(bare.device)
            out = bare.model.generate(input_ids=enc.inputs["input_ids"], attention_mask=enc.inputs["attention_mask"],
                                      max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=bare.pad_id)
            bare.tokenizer.batch_decode(out[:, enc.inputs["input_ids"].shape[1]:], skip_special_tokens=True)

        @torch.no_grad()
        def bare_eval():  # tokenize input + target, one teacher-forced forward
            bare.model(**tasks.encode(bare, prompts, targets).to(bare.device).inputs)

        routed = []
        ratios = {"generate": [], "eval": []}
        seconds = {"generate": ([], []), "eval": ([], [])}
        for rep in range(args.reps + 2):  # two warm-up repetitions are dropped
            for kind, base_fn, edit_fn in (
                    ("generate", bare_generate, lambda: routed.append(edited.predict(prompts, args.new_tokens))),
                    ("eval", bare_eval, lambda: edited.teacher_forced(prompts, targets))):
                b, e = timed(base_fn), timed(edit_fn)
                if rep >= 2:
                    ratios[kind].append(e / b)
                    seconds[kind][0].append(b)
                    seconds[kind][1].append(e)
        n_routed = sum(p.route.routed for p in routed[-1])
        results[name] = {kind: {"ratio_median": float(np.median(r)), "ratio_p25": float(np.percentile(r, 25)),
                                "ratio_p75": float(np.percentile(r, 75)),
                                "bare_ms": 1000 * float(np.median(seconds[kind][0])),
                                "bundle_ms": 1000 * float(np.median(seconds[kind][1]))}
                         for kind, r in ratios.items()}
        results[name]["routed_rows"] = n_routed
    rows = [[name, kind, r[kind]["bare_ms"], r[kind]["bundle_ms"], r[kind]["ratio_median"],
             f"{r[kind]['ratio_p25']:.3f}-{r[kind]['ratio_p75']:.3f}", f"{r['routed_rows']}/{args.batch}"]
            for name, r in results.items() for kind in ("generate", "eval")]
    built = f"built in {build_seconds:.0f} s" if build_seconds is not None else "built earlier"
    synthetic = f" + {args.synthetic_clusters} synthetic clusters" if args.synthetic_clusters else ""
    markdown = (f"{args.model}: bundle of {args.n} edits{synthetic} ({edited.n_blocks} blocks, {len(edited.router)} clusters, "
                f"{edited.config.key_source} keys; {built}) vs the bare model, batches of {args.batch}, "
                f"{args.new_tokens} new tokens, {args.reps} interleaved repetitions, {args.threads} torch thread(s)."
                "\n\n"
                + common.table(["inputs", "call", "bare ms", "bundle ms", "ratio (median)", "ratio p25-p75", "routed"],
                               rows))
    common.write("overhead", args.tag or (f"n{args.n}" if args.model == "stories260K" else f"{args.model}-n{args.n}"), env, {"n": args.n, "results": results,
                                                            "build_seconds": build_seconds,
                                                            "synthetic_clusters": args.synthetic_clusters}, markdown, args.out)


if __name__ == "__main__":
    main()
