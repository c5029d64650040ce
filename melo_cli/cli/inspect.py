"""`melo inspect`: a bundle's manifest (checked) as a table or JSON, or the layers melo would choose for
a model. Neither imports torch for a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from melo_cli.cli.app import MeloCommand, Quiet, Verbose, app, flag, log_options, one_line
from melo_cli.cli.console import emit_json, exits_cleanly, stdout
from melo_cli.errors import InputError


@app.command(cls=MeloCommand)
@exits_cleanly
def inspect(
    bundle: Annotated[Optional[Path], typer.Argument(help="Bundle directory to summarise.", show_default=False,
                                                     metavar="BUNDLE")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Instead: show the task, LoRA layers and key layer "
                                                                 "melo would choose for this base model.")] = None,
    json_out: Annotated[bool, flag("--json", "Print JSON instead of a table.")] = False,
    edits: Annotated[bool, flag("--edits", "List the bundle's edits: id, batch, block, cluster, and whether each "
                                           "still routes to its own cluster (from its stored key: no model "
                                           "is loaded).")] = False,
    task: Annotated[str, typer.Option(help="With --model: auto, causal-lm, seq2seq or classification.")] = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Summarise a bundle's manifest (checked), or show the layers melo would choose for a model."""
    log_options(verbose, quiet)
    from melo_cli import bundle as bundle_io

    if (bundle is None) == (model is None):
        raise InputError("give a BUNDLE directory or --model BASE (one of them)")
    if model is not None:
        from melo_cli.jobs.open import plan
        info = plan(model, task)
        if json_out:
            emit_json(info)
            return
        table = Table(title=f"melo's choice for {model}", show_header=False)
        table.add_row("task", info["task"])
        table.add_row("blocks", ", ".join(f"{s['name']} ({s['blocks']})" for s in info["stacks"]))
        table.add_row("LoRA layers", "\n".join(info["lora_layers"]))
        table.add_row("key layer", info["key_layer"])
        stdout.print(table)
        return
    loaded = bundle_io.load(bundle)
    if edits:
        _print_edits(loaded, json_out)
        return
    manifest = loaded.manifest.to_dict()
    info = {"bundle": str(bundle), "base_model": manifest["base_model"], "counts": manifest["counts"],
            "config": manifest["config"], "key_dim": manifest["key_dim"], "melo_version": manifest["melo_version"],
            "created": manifest["created"], "files": manifest["files"]}
    if json_out:
        emit_json(info)
        return
    config, counts = manifest["config"], manifest["counts"]
    table = Table(title=f"melo bundle {bundle}", show_header=False)
    table.add_row("base model", f"{manifest['base_model']['name']} ({manifest['base_model']['architecture']})")
    fingerprint = manifest["base_model"]["fingerprint"]
    table.add_row("fingerprint", str(fingerprint.get("structure") if isinstance(fingerprint, dict) else fingerprint)[:16])
    table.add_row("task", config["task"])
    table.add_row("edits / batches", f"{counts['edits']} ({counts.get('live_edits', counts['edits'])} live) / "
                                     f"{counts['batches']}")
    table.add_row("LoRA", f"{counts['blocks']} blocks x {config['rank_per_block']} ranks on {len(config['lora_layers'])} layers")
    table.add_row("LoRA layers", "\n".join(config["lora_layers"]))
    table.add_row("router", f"{counts['clusters']} clusters; key {config['key_layer']} ({config['key_pooling']}, "
                            f"{config['metric']}, dim {manifest['key_dim']}); init radius {config['init_radius']:.4g}")
    table.add_row("made", f"melo {manifest['melo_version']}, {manifest['created']}")
    stdout.print(table)


def edit_rows(loaded) -> list[dict]:
    """One row per edit of a bundle: where it lives in the router, the entity it routes on, and whether its
    key still reaches it."""
    router, rows = loaded.router, []
    homes = router.member_routes([e.input for e in loaded.edits])
    for n, edit in enumerate(loaded.edits):
        cluster = router.cluster_of(n)
        status = "forgotten" if edit.forgotten else "superseded" if edit.superseded else "live"
        routes_home = None if n not in homes else homes[n].routed and homes[n].cluster == cluster
        member = router.members_of_edit(n)
        entity = router.member_subjects[member[-1]] if member else None
        rows.append({"edit": n + 1, "id": edit.id, "batch": edit.batch, "input": edit.input,
                     "target": edit.target, "entity": entity,
                     "entity_short": list(router.member_short[member[-1]]) if entity else [], "status": status,
                     "cluster": cluster, "block": int(router.blocks[cluster]) if cluster is not None else None,
                     "routes_to_own_cluster": routes_home})
    return rows


def _print_edits(loaded, json_out: bool) -> None:
    rows = edit_rows(loaded)
    if json_out:
        for row in rows:
            emit_json(row)
        return
    table = Table(title=f"edits of {loaded.path}", box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
    widest = lambda key, cap: min(cap, max([len(str(r[key] or "")) for r in rows] + [len(key)]))  # noqa: E731
    fixed = {"id": widest("id", 12), "batch": widest("batch", 6), "status": widest("status", 10), "block": 5,
             "home": 4}
    for column, ratio in (("id", None), ("batch", None), ("input", 4), ("target", 2), ("entity", 2),
                          ("status", None), ("block", None), ("home", None)):  # one line per edit, any width
        table.add_column(column, no_wrap=True, overflow="ellipsis", ratio=ratio,
                         min_width=fixed.get(column, 6), max_width=fixed.get(column))
    for r in rows:
        routes_on = r["entity"] or "-"
        if r["entity_short"]:
            routes_on += " / " + " / ".join(r["entity_short"])
        table.add_row(str(r["id"] or ""), str(r["batch"] or ""), one_line(r["input"]), one_line(r["target"]),
                      routes_on, r["status"], "" if r["block"] is None else str(r["block"]),
                      {True: "yes", False: "NO", None: ""}[r["routes_to_own_cluster"]])
    stdout.print(table)
