"""The `melo` command: parses options, calls the workflow, prints results.

Results go to stdout (JSON where asked, or a rich table), progress and logs to stderr.
Exit codes: 0 ok, 1 failure, 2 bad input, usage or bundle, 3 an eval gate failed,
75 the bundle is locked by another melo edit (try again later).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .console import emit_json, exits_cleanly, setup_logging, stderr, stdout
from .edits import ReadReport
from .errors import InputError

app = typer.Typer(
    name="melo",
    help="Lifelong model editing with MELO: neuron-indexed dynamic LoRA and an hnswlib router.\n\n"
         "Edit a Hugging Face model with a JSONL file of corrections, get a bundle, apply it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Device = Annotated[str, typer.Option(help="Where to run: auto (CUDA when present), cpu, cuda or cuda:N.")]
Dtype = Annotated[str, typer.Option(help="Base model dtype: auto (the bundle's, else the checkpoint's), "
                                          "float32, float16 or bfloat16.")]


def _version(value: bool) -> None:
    if value:
        print(f"melo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log lines on stderr.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Options that apply to every command."""
    setup_logging(verbose, quiet)


@app.command()
@exits_cleanly
def edit(
    base: Annotated[Optional[str], typer.Argument(help="Base model: a local folder or a Hugging Face hub id. "
                                                       "Optional with --bundle (the bundle's base).", show_default=False)] = None,
    edits: Annotated[Optional[Path], typer.Argument(help="JSONL edits: {\"input\", \"target\", \"rephrases\", \"id\", "
                                                         "\"batch\"}; CounterFact/zsRE names work too.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write (built aside, then swapped in).")] = ...,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Continue this bundle (left untouched unless it is also -o).")] = None,
    batch_size: Annotated[int, typer.Option(help="Edits per batch (per LoRA block) for lines without a 'batch' field.")] = 5,
    rank_per_block: Annotated[int, typer.Option(help="LoRA ranks given to each batch.")] = 4,
    lora_layers: Annotated[Optional[str], typer.Option(help="Comma-separated module-name suffixes to put LoRA on "
                                                            "(default: feed-forward layers of the top two blocks).")] = None,
    key_layer: Annotated[Optional[str], typer.Option(help="Module whose output makes the router key "
                                                          "(default: the block below the lowest LoRA layer).")] = None,
    key_pooling: Annotated[str, typer.Option(help="Pool the key over the input's tokens: mean or last.")] = "mean",
    key_source: Annotated[str, typer.Option(help="Router keys from the base model's hidden state (base) or from a "
                                                 "sentence encoder (encoder, with --key-encoder).")] = "base",
    key_encoder: Annotated[Optional[str], typer.Option(help="Sentence encoder for --key-source encoder: a local "
                                                            "folder or hub id (e.g. all-MiniLM-L6-v2).")] = None,
    negatives: Annotated[Optional[Path], typer.Option(help="JSONL of inputs whose outputs must not change: their "
                                                           "keys shrink any edit cluster that would cover them.")] = None,
    metric: Annotated[str, typer.Option(help="Router distance: euclidean or cosine.")] = "euclidean",
    init_radius: Annotated[str, typer.Option(help="Radius of a new cluster: a number, or auto (from the median "
                                                  "nearest-neighbour distance of the edits' keys: half of it for "
                                                  "split, all of it for voronoi).")] = "auto",
    radius_policy: Annotated[str, typer.Option(help="split: MELO/GRACE rules (same label joins, radii halve between "
                                                     "labels); voronoi: every edit its own centre of radius r0, the "
                                                     "nearest centre decides (see README, Router keys).")] = "split",
    margin: Annotated[float, typer.Option(help="Route only when every cluster of another label is (1 + margin) "
                                               "times farther than the nearest (0: off).")] = 0.0,
    lr: Annotated[float, typer.Option(help="Adam learning rate for each new block.")] = 1e-2,
    max_steps: Annotated[int, typer.Option(help="Most training steps per batch (stops early when every target "
                                                "token is the argmax and the loss is under --loss-threshold).")] = 100,
    loss_threshold: Annotated[float, typer.Option(help="Early-stop loss per batch.")] = 0.05,
    task: Annotated[str, typer.Option(help="auto, causal-lm, seq2seq or classification.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the LoRA initialisation.")] = 0,
    skip_invalid: Annotated[bool, typer.Option(help="Report bad lines on stderr and edit with the rest.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing -o directory.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another melo edit holding the bundle "
                                             "(then exit 75).")] = 0.0,
    eval_every: Annotated[int, typer.Option(help="Every K batches append a row to the bundle's history.jsonl: "
                                                 "edit success of the batch, retention of earlier edits, locality.")] = 0,
    locality: Annotated[Optional[Path], typer.Option(help="Holdout JSONL for the history's locality column.")] = None,
    force_base: Annotated[bool, typer.Option(help="Continue a bundle on a base whose fingerprint differs.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow the model's own Python code (off: nothing loaded runs code).")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Train edits into a bundle: one new LoRA block per batch, one router cluster per edit key.

    Prints a JSON summary on stdout.

    Examples:

      melo edit sample_models/stories260K sample_edits/counterfact-20.jsonl -o bundle/

      melo edit sample_edits/more.jsonl --bundle bundle/ -o bundle-v2/
    """
    from . import workflow

    if edits is None and base is not None and bundle is not None:
        base, edits = None, Path(base)  # `melo edit EDITS --bundle OLD -o OUT`
    if edits is None:
        raise InputError("missing EDITS: the JSONL file of edits")
    opts = workflow.EditOptions(
        task=task, lora_layers=[s.strip() for s in lora_layers.split(",") if s.strip()] if lora_layers else None,
        key_layer=key_layer, rank_per_block=rank_per_block, key_pooling=key_pooling, key_source=key_source,
        key_encoder=key_encoder, negatives=negatives, metric=metric, margin=margin, radius_policy=radius_policy,
        init_radius=init_radius, lr=lr, max_steps=max_steps, loss_threshold=loss_threshold, batch_size=batch_size,
        seed=seed, device=device, dtype=dtype, skip_invalid=skip_invalid, force_base=force_base,
        trust_remote_code=trust_remote_code, overwrite=overwrite, eval_every=eval_every, locality=locality)
    report = ReadReport()
    with Progress(TextColumn("[bold]editing"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                  TimeElapsedColumn(), TextColumn("{task.fields[note]}"), console=stderr, transient=False,
                  disable=not stderr.is_terminal) as progress:
        bar = progress.add_task("edit", total=None, note="")

        def on_batch(r) -> None:
            progress.update(bar, advance=1, note=f"block {r.block}: {r.steps} steps, loss {r.loss:.3f}")

        summary = workflow.run_edit(base, edits, out, continue_from=bundle, opts=opts, on_batch=on_batch,
                                    report=report, wait=wait).summary
    for error in report.skipped:
        print(f"melo: skipped: {error}", file=sys.stderr)
    emit_json(summary)


def _read_prompts(prompts: list[str]) -> list[str]:
    if prompts == ["-"]:
        lines = [line.rstrip("\n") for line in sys.stdin]
        return [line for line in lines if line.strip()]
    return prompts


@app.command()
@exits_cleanly
def generate(
    prompts: Annotated[list[str], typer.Argument(help="Prompts, or - to read one per line from stdin.", show_default=False)],
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="The edit bundle to apply.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model (default: the one the bundle names). "
                                                     "Without --bundle: the bare base model.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt (causal LM, seq2seq).")] = 20,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per prompt: text or label, route.")] = False,
    force_base: Annotated[bool, typer.Option(help="Apply the bundle even if the base fingerprint differs.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow the model's own Python code.")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Run the base model with the bundle applied: greedy text, or the predicted label for classifiers.

    Each prompt is routed by its own key: inside an edit cluster's radius it gets that cluster's
    LoRA block, anywhere else it gets the untouched base model.
    """
    from . import workflow

    texts = _read_prompts(prompts)
    if not texts:
        raise InputError("no prompt given (stdin was empty)")
    if bundle is None and base is None:
        raise InputError("pass --bundle (and optionally --base), or --base alone for the bare model")
    if bundle is not None:
        _, edited = workflow.open_bundle(bundle, base=base, device=device, dtype=dtype, force_base=force_base,
                                         trust_remote_code=trust_remote_code)
    else:
        edited = workflow.bare_model(base, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        for prompt, pred in zip(chunk, edited.predict(chunk, max_new_tokens=max_new_tokens)):
            if json_out:
                route = pred.route
                record = {"prompt": prompt}
                if pred.label is not None:
                    record.update(label=pred.label, probabilities=pred.probabilities)
                else:
                    record["text"] = pred.text
                record["route"] = ({"cluster": route.cluster, "block": route.block, "distance": route.distance}
                                   if route.routed else None)
                emit_json(record)
            else:
                print(pred.label if pred.label is not None else pred.text, flush=True)


@app.command()
@exits_cleanly
def inspect(
    bundle: Annotated[Optional[Path], typer.Argument(help="Bundle directory to summarise.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Instead: show the task, LoRA layers and key layer "
                                                                 "melo would choose for this base model.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    task: Annotated[str, typer.Option(help="With --model: auto, causal-lm, seq2seq or classification.")] = "auto",
) -> None:
    """Summarise a bundle's manifest (checked), or show the layers melo would choose for a model."""
    from . import bundle as bundle_io, workflow

    if (bundle is None) == (model is None):
        raise InputError("give a BUNDLE directory or --model BASE (one of them)")
    if model is not None:
        info = workflow.plan(model, task)
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
    manifest = loaded.manifest
    info = {"bundle": str(bundle), "base_model": manifest["base_model"], "counts": manifest["counts"],
            "config": manifest["config"], "key_dim": manifest["key_dim"], "melo_version": manifest["melo_version"],
            "created": manifest["created"], "files": manifest["files"]}
    if json_out:
        emit_json(info)
        return
    config, counts = manifest["config"], manifest["counts"]
    table = Table(title=f"melo bundle {bundle}", show_header=False)
    table.add_row("base model", f"{manifest['base_model']['name']} ({manifest['base_model']['architecture']})")
    table.add_row("fingerprint", manifest["base_model"]["fingerprint"][:16])
    table.add_row("task", config["task"])
    table.add_row("edits / batches", f"{counts['edits']} / {counts['batches']}")
    table.add_row("LoRA", f"{counts['blocks']} blocks x {config['rank_per_block']} ranks on {len(config['lora_layers'])} layers")
    table.add_row("LoRA layers", "\n".join(config["lora_layers"]))
    table.add_row("router", f"{counts['clusters']} clusters; key {config['key_layer']} ({config['key_pooling']}, "
                            f"{config['metric']}, dim {manifest['key_dim']}); init radius {config['init_radius']:.4g}")
    table.add_row("made", f"melo {manifest['melo_version']}, {manifest['created']}")
    stdout.print(table)


def _format_metric(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format_metric(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_history(rows: list[dict], json_format: bool) -> None:
    if json_format:
        for row in rows:
            emit_json(row)
        return
    table = Table(title="retention over time")
    for column in ("batches", "edits", "edit_success", "retention", "locality", "seconds"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(_format_metric(row.get(c)) for c in ("batches", "edits", "edit_success", "retention",
                                                              "locality", "seconds")))
    stdout.print(table)


@app.command("eval")
@exits_cleanly
def eval_command(
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="The bundle to evaluate.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model (default: the bundle's). Without --bundle: "
                                                     "the pre-edit numbers of the bare model.")] = None,
    edits: Annotated[Optional[Path], typer.Option(help="Edits JSONL to score (default: the bundle's own edits).")] = None,
    locality: Annotated[Optional[Path], typer.Option(help="Holdout JSONL {\"input\", \"target\"?}: inputs "
                                                          "whose output must not change.")] = None,
    mode: Annotated[str, typer.Option(help="teacher-forced, generate or both.")] = "teacher-forced",
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    min_edit_success: Annotated[Optional[float], typer.Option(help="Gate: exit 3 if edit success is lower.")] = None,
    min_generality: Annotated[Optional[float], typer.Option(help="Gate: exit 3 if generality is lower.")] = None,
    min_locality: Annotated[Optional[float], typer.Option(help="Gate: exit 3 if locality is lower.")] = None,
    batch_size: Annotated[int, typer.Option(help="Inputs per forward pass.")] = 32,
    history: Annotated[bool, typer.Option("--history", help="Print the bundle's retention history instead.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="With --history: draw the curves to this PNG "
                                                      "(needs the 'plot' extra: matplotlib).")] = None,
    force_base: Annotated[bool, typer.Option(help="Apply the bundle even if the base fingerprint differs.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow the model's own Python code.")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Score a bundle: edit success, generality, locality, holdout accuracy, perplexity, routing.

    Gates (--min-*) make it a CI check: exit 3 naming the failed gate on stderr.
    """
    from . import bundle as bundle_io, evaluate, workflow
    from .edits import read_edits, read_holdout
    from .errors import GateFailed

    if format not in ("table", "json"):
        raise InputError(f"--format {format!r}: choose table or json")
    modes = {"teacher-forced": ["teacher-forced"], "generate": ["generate"],
             "both": ["teacher-forced", "generate"]}.get(mode)
    if modes is None:
        raise InputError(f"--mode {mode!r}: choose teacher-forced, generate or both")
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if history or plot is not None:
        if bundle is None:
            raise InputError("--history needs --bundle")
        rows = bundle_io.load(bundle).history
        if not rows:
            raise InputError(f"{bundle}: has no history; edit with --eval-every K to record one")
        _print_history(rows, format == "json")
        if plot is not None:
            from .plot import plot_history
            plot_history(rows, plot)
        return
    if bundle is None and base is None:
        raise InputError("pass --bundle, or --base MODEL with --edits for the pre-edit numbers")
    edit_list = read_edits(edits) if edits is not None else None
    holdout = read_holdout(locality) if locality is not None else []
    if bundle is not None:
        loaded, edited = workflow.open_bundle(bundle, base=base, device=device, dtype=dtype, force_base=force_base,
                                              trust_remote_code=trust_remote_code)
        bundle_edits = loaded.edits
    else:
        if edit_list is None:
            raise InputError("--base without --bundle needs --edits")
        edited = workflow.bare_model(base, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        bundle_edits = []
    edit_list = edit_list if edit_list is not None else bundle_edits
    with Progress(TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr, disable=not stderr.is_terminal) as progress:
        bar = progress.add_task("eval", total=evaluate.work(edit_list, holdout, modes))
        result = evaluate.evaluate(edited, edit_list, holdout, modes, batch_size,
                                   lambda n: progress.update(bar, advance=n), bundle_edits)
    if format == "json":
        emit_json(result)
    else:
        table = Table(title=f"melo eval ({result['mode']})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("edit_success", "generality", "locality", "holdout_accuracy", "perplexity"):
            table.add_row(key, _format_metric(result[key]))
        table.add_row("edits / clusters / blocks", f"{result['n_edits']} / {result['n_clusters']} / {result['n_blocks']}")
        for name, counts in (result["routing"] or {}).items():
            table.add_row(f"routed: {name}", ", ".join(f"{k} {v}" for k, v in counts.items()))
        stdout.print(table)
    failures = evaluate.gate_failures(result, {"edit_success": min_edit_success, "generality": min_generality,
                                               "locality": min_locality})
    if failures:
        raise GateFailed("gate failed: " + "; ".join(failures))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
