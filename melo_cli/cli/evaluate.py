"""`melo eval`: score a bundle (edit success, generality, locality, retention) with gates for CI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from melo_cli.cli.app import (Device, DeviceMap, Dtype, ForceBase, MaxMemory, MeloCommand, Quiet, TrustRemoteCode,
                              Verbose, app, flag, format_metric, loading, log_options, print_history, progress_bar)
from melo_cli.cli.console import emit_json, exits_cleanly, stdout
from melo_cli.errors import InputError


@app.command("eval", cls=MeloCommand)
@exits_cleanly
def eval_command(
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="The bundle to evaluate.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model (default: the bundle's). Without --bundle: "
                                                     "the pre-edit numbers of the bare model.")] = None,
    edits: Annotated[Optional[Path], typer.Option(help="Edits to score (default: the bundle's own live edits).")] = None,
    locality: Annotated[Optional[Path], typer.Option(help="Holdout JSONL {\"input\", \"target\"?}: inputs "
                                                          "whose output must not change.")] = None,
    mode: Annotated[str, typer.Option(help="teacher-forced, generate or both.")] = "teacher-forced",
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    min_edit_success: Annotated[Optional[float], typer.Option(help="Gate: exit 3 if edit success is lower.")] = None,
    min_generality: Annotated[Optional[float], typer.Option(help="Gate: exit 3 if generality is lower.")] = None,
    min_locality: Annotated[Optional[float], typer.Option(help="Gate: exit 3 if locality is lower.")] = None,
    min_fluency: Annotated[Optional[float], typer.Option(help="Gate: exit 3 if the n-gram entropy of edited "
                                                             "continuations is below this share of the bare "
                                                             "model's on the same prompts (generate mode).")] = None,
    fluency_tokens: Annotated[int, typer.Option(help="Generate mode: new tokens per continuation for the "
                                                     "fluency numbers (0: skip them).")] = 40,
    batch_size: Annotated[int, typer.Option(help="Inputs per forward pass.")] = 32,
    history: Annotated[bool, flag("--history", "Print the bundle's retention history instead.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="With --history: draw the curves to this PNG "
                                                      "(needs the 'plot' extra: matplotlib).")] = None,
    force_base: ForceBase = False,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    dtype: Dtype = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Score a bundle: edit success, generality, locality, holdout accuracy, perplexity, routing.

    Gates (--min-*) make it a CI check: exit 3 naming the failed gate on stderr. Edits that a
    later correction superseded are not scored.
    """
    log_options(verbose, quiet)
    from melo_cli.edits import read_edits, read_holdout
    from melo_cli.errors import GateFailed
    from melo_cli.eval import report

    if format not in ("table", "json"):
        raise InputError(f"`format` {format!r}: choose table or json")
    modes = report.modes_of(mode)
    if batch_size < 1:
        raise InputError(f"`batch_size` {batch_size}: expected a whole number >= 1")
    if fluency_tokens < 0:
        raise InputError(f"`fluency_tokens` {fluency_tokens}: expected 0 (off) or a number of tokens")
    if min_fluency is not None and ("generate" not in modes or fluency_tokens == 0):
        raise InputError("`min_fluency` needs `mode` generate (or both) and `fluency_tokens` above 0")
    if plot is not None:
        from melo_cli.eval.plot import check_available
        check_available()
    if history or plot is not None:
        _print_history(bundle, format, plot)
        return
    if bundle is None and base is None:
        raise InputError("pass `bundle`, or `base` MODEL with `edits` for the pre-edit numbers")
    if bundle is None and edits is None:
        raise InputError("`base` without `bundle` needs `edits`")
    edit_list = read_edits(edits) if edits is not None else None
    holdout = read_holdout(locality) if locality is not None else []
    from melo_cli.jobs.open import open_model

    model = open_model(bundle, base, loading(device, dtype, device_map, max_memory, force_base, trust_remote_code))
    with progress_bar("evaluating", "inputs") as progress:
        bar = progress.add_task("eval", total=None, note="")
        result = model.evaluate(edit_list, holdout, mode, batch_size, fluency_tokens,
                                source=edits if edits is not None else bundle / "edits.jsonl",
                                on_plan=lambda n: progress.update(bar, total=n),
                                advance=lambda n: progress.update(bar, advance=n))
    if format == "json":
        emit_json(result)
    else:
        table = Table(title=f"melo eval ({result['mode']})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        names = {"perplexity": "perplexity of the edit targets (teacher-forced)"}
        for key in ("edit_success", "generality", "locality", "holdout_accuracy", "perplexity"):
            table.add_row(names.get(key, key), format_metric(result[key]))
        if result["fluency"] is not None:
            flu = result["fluency"]
            table.add_row("fluency (entropy, edited / base)", f"{format_metric(flu['ratio'])} "
                          f"({flu['continuations']} routed, {flu['tokens']} tokens)")
            table.add_row("fluency: targets repeated", format_metric(flu["repeats"]))
            if flu["oracle_ratio"] is not None:
                table.add_row("fluency ceiling (bare model after the target)", format_metric(flu["oracle_ratio"]))
        table.add_row("edits / clusters / blocks", f"{result['n_edits']} / {result['n_clusters']} / {result['n_blocks']}")
        for name, counts in (result["routing"] or {}).items():
            table.add_row(f"routed: {name}", ", ".join(f"{k} {v}" for k, v in counts.items()))
        stdout.print(table)
    failures = report.gate_failures(result, {"edit_success": min_edit_success, "generality": min_generality,
                                             "locality": min_locality, "fluency": min_fluency})
    if failures:
        raise GateFailed("gate failed: " + "; ".join(failures))


def _print_history(bundle: Path | None, format: str, plot: Path | None) -> None:
    """`--history`: the bundle's retention rows (and events, in JSON), optionally plotted."""
    from melo_cli import bundle as bundle_io

    if bundle is None:
        raise InputError("`history` needs `bundle`")
    rows = bundle_io.load(bundle).history
    retention = [r for r in rows if "event" not in r]  # events (a forget) are shown in JSON only
    shown = rows if format == "json" else retention
    if not shown or (plot is not None and not retention):
        raise InputError(f"{bundle}: has no history; edit with --eval-every K to record one")
    print_history(shown, format == "json")
    if plot is not None:
        from melo_cli.eval.plot import plot_history
        plot_history(retention, plot)
