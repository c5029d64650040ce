"""What an edit costs: melo's training above the frozen layers vs full forward/backward passes vs the
reference MELO code's regime, on the same model, data and machine, side by side in one run.

    python benchmarks/cost.py --model smollm2 --n 100          # CounterFact, batches of 10

Regimes (each a fresh model, the same edits in the same order):
- melo: the defaults of `melo edit` (a block per edit, generic contexts, the frozen prefix replayed
  and logits only where targets are scored);
- melo, full passes: the same settings, every step a full forward/backward with all logits;
- MELO reference regime: the reference code's schedule, a fixed 50 full passes per batch with one
  block per batch (its layout: base-model keys, the split rule).
Reported: seconds per edit (keys, routing and training; threads pinned, 1 by default), optimizer
steps per batch, and edit success / generality / locality under generation, so a speed-up that
changed what was learned would show. Ratios are taken within the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from melo_cli import MeloConfig, training
from melo_cli.model import backbones
from melo_cli.model import bases
from melo_cli.eval import report as evaluate  # noqa: E402
from melo_cli.model.edited_model import EditedModel  # noqa: E402
from melo_cli.edits import Edit, Holdout  # noqa: E402

REGIMES = {
    "melo": ({}, True),
    "full-passes": ({}, False),
    "reference-regime": ({"key_source": "base", "block_per": "batch", "max_steps": 50, "loss_threshold": 1e-12}, False),
}
LABELS = {"melo": "melo (frozen prefix replayed, scored logits only, rows grouped by length)", "full-passes": "melo, full passes",
          "reference-regime": "MELO reference regime (50 full passes per batch)"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_regime(model: str, settings: dict, split: bool, edits: list[Edit], batch_size: int, device: str,
               dtype: str) -> tuple:
    backbone = backbones.load(model, device=device, dtype=dtype)
    config = bases.resolve_config(backbone.model, backbone.task, MeloConfig(**settings))
    edited = EditedModel(backbone, config, None, bases.load_encoder(config, backbone.device, None, False))
    groups = [list(range(i, min(i + batch_size, len(edits)))) for i in range(0, len(edits), batch_size)]
    _sync(backbone.device)
    started = time.perf_counter()
    result = training.run(edited, [], edits, groups, split=split)
    _sync(backbone.device)
    return edited, result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dataset", default="counterfact", choices=["counterfact", "zsre"])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16, float16")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    model = common.model_path(args.model)
    records = (common.counterfact if args.dataset == "counterfact" else common.zsre)(args.n)
    edits = [Edit(r["input"], r["target"], tuple(r["rephrases"]), subject=r["subject"]) for r in records]
    holdout = [Holdout(r["locality"], r["locality_target"]) for r in records]
    results, rows = {}, []
    if args.device.startswith("cuda"):  # CUDA context, cuBLAS handles and kernel loads stay out of every regime
        run_regime(model, {}, True, edits[:args.batch_size], args.batch_size, args.device, args.dtype)
    for name in args.regimes.split(","):
        settings, split = REGIMES[name]
        torch.set_num_threads(args.threads)
        edited, result, seconds = run_regime(model, settings, split, edits, args.batch_size, args.device,
                                              args.dtype)
        torch.set_num_threads(args.threads)
        scores = evaluate.evaluate(edited, [e for e in edits], holdout, ["generate"], 32, bundle_edits=edits)
        steps = [r.steps for r in result.reports]
        results[name] = {"seconds": seconds, "seconds_per_edit": seconds / len(edits), "steps_per_batch": steps,
                         "edit_success": scores["edit_success"], "generality": scores["generality"],
                         "locality": scores["locality"], "unlearned": len(result.unlearned)}
        print(name, results[name], file=sys.stderr)
        del edited
    fastest = results[next(iter(results))]["seconds_per_edit"]
    for name, r in results.items():
        rows.append([LABELS[name], r["seconds_per_edit"], r["seconds_per_edit"] / fastest, sum(r["steps_per_batch"]) /
                     len(r["steps_per_batch"]), r["edit_success"], r["generality"], r["locality"]])
    env = common.environment(args.device)
    env["threads"], env["dtype"] = args.threads, args.dtype
    markdown = (f"{args.dataset} N={args.n}, batches of {args.batch_size}, {args.model}, {args.threads} torch thread(s), "
                f"device {args.device}, dtype {args.dtype}; "
                f"generate-mode scores.\n\n" + common.table(
                    ["regime", "s/edit", "x melo", "steps/batch", "ES", "generality", "locality"], rows))
    common.write("cost", args.tag or f"{args.model}-{args.dataset}-n{args.n}", env,
                 {"model": args.model, "n": args.n, "dtype": args.dtype, "results": results}, markdown, args.out)


if __name__ == "__main__":
    main()
