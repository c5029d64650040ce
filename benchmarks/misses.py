"""Which routed rephrases do not give their target, and why: edit N CounterFact records without subject fields
(the defaults, or settings given as JSON), then generate every rephrase and list the rows that were routed
but missed, with the block they went to and what was written instead. One run per setting, side by side.

    python benchmarks/misses.py --model smollm2 --n 1000
    python benchmarks/misses.py --model smollm2 --n 1000 --settings '{"loss_threshold": 0.005}' --tag thr005

A routed row that misses is either the router's fault (another edit's block) or the block's (its own block,
which lost to the base model). benchmarks/NOTES.md reads the second kind: most sit in CounterFact templates
that put the target where it is not English ("the locals held a" + Vienna).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import editing  # noqa: E402

from melo_cli.eval.metrics import produces  # noqa: E402


def cell(text: str) -> str:
    """Text as one markdown table cell: newlines shown as \\n, no column breaks."""
    return json.dumps(text, ensure_ascii=False)[1:-1].replace("|", "\\|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stories260K", help="stories260K, smollm2 or gemma3-270m")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--settings", default="{}", help="MeloConfig settings as JSON (default: the defaults)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pinned for timing)")
    parser.add_argument("--tag", default=None, help="results file suffix (default: MODEL-nN)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    settings = json.loads(args.settings)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    editing.MODEL = common.model_path(args.model)
    records = common.counterfact(args.n)
    batches = [records[i:i + args.batch_size] for i in range(0, len(records), args.batch_size)]
    ed = editing.MeloEditor("cpu", name="melo-nosubj", subjects=False, **settings)
    torch.set_num_threads(args.threads)
    steps, seconds = ed.edit_all(batches, lambda done: None)

    rephrases, targets = [r["rephrases"][0] for r in records], [r["target"] for r in records]
    routes, own = ed.model.route(rephrases), ed.model.route([r["input"] for r in records])
    texts = editing.gen_texts(ed, rephrases, 0, targets)
    hits = [produces(t, g) for t, g in zip(texts, targets)]
    routed = [i for i, r in enumerate(routes) if r.routed]
    right = {i for i in routed if routes[i].block == own[i].block}
    misses = [{"record": records[i]["id"], "own_block": i in right, "prompt": rephrases[i], "target": targets[i],
               "text": texts[i]} for i in routed if not hits[i]]
    result = {"settings": settings, "seconds_per_edit": seconds / len(records),
              "steps_per_batch_mean": sum(steps) / len(steps), "generality_gen": sum(hits) / len(records),
              "routed": len(routed), "own_block": len(right), "routed_hits": sum(hits[i] for i in routed),
              "own_block_hits": sum(hits[i] for i in right), "misses": misses}

    env = common.environment("cpu")
    env["threads"] = args.threads
    summary = {k: v for k, v in result.items() if k != "misses"}
    markdown = (f"Routed rephrases that miss, CounterFact N={len(records)} without subject fields, batches of "
                f"{args.batch_size}, {args.model}, settings {json.dumps(settings)}, {args.threads} torch thread(s).\n\n"
                + common.table(list(summary), [[json.dumps(v) if isinstance(v, dict) else v for v in summary.values()]])
                + "\n\n'own_block': routed to the block that learned the rephrase's edit.\n\n"
                + common.table(["record", "own block", "prompt", "target", "written instead"],
                               [[m["record"], m["own_block"], cell(m["prompt"][-60:]), m["target"],
                                 cell(m["text"][:40])] for m in misses]))
    common.write("misses", args.tag or f"{args.model}-n{len(records)}", env, {"model": args.model, "n": len(records),
                 "results": result}, markdown, args.out)


if __name__ == "__main__":
    main()
