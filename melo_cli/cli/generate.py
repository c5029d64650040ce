"""`melo generate`: a shell over MeloModel.predict, prompts from arguments, stdin or JSONL, one line (or one
JSON object) per prompt on stdout."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from melo_cli.cli.app import (Device, DeviceMap, Dtype, ForceBase, MaxMemory, MeloCommand, Quiet, TrustRemoteCode,
                              Verbose, app, flag, loading, log_options, one_line, option, progress_bar, switch)
from melo_cli.cli.console import emit_json, exits_cleanly
from melo_cli.errors import InputError
from melo_cli.model.generation import Decoding

D = Decoding


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
    temperature: Annotated[float, option(D, "temperature")] = 0.0,
    top_p: Annotated[float, option(D, "top_p")] = 1.0,
    seed: Annotated[Optional[int], option(D, "seed")] = None,
    chat: Annotated[bool, switch(D, "chat", "--chat")] = False,
    system: Annotated[Optional[str], option(D, "system")] = None,
    no_handoff: Annotated[bool, switch(D, "handoff", "--no-handoff")] = False,
    force_base: ForceBase = False,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    dtype: Dtype = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Run the base model with the bundle applied: text, or the predicted label for classifiers.

    Each prompt is routed by its own key: inside an edit cluster's radius it gets that cluster's
    LoRA block until it has given the edit's target, then the base model continues; anywhere else it
    gets the untouched base model. Plain output is one line per prompt, `PROMPT => CONTINUATION`
    (newlines in the continuation written as a backslash and n); --json adds the route.
    """
    log_options(verbose, quiet)
    if max_new_tokens < 1:
        raise InputError(f"`max_new_tokens` {max_new_tokens}: must be at least 1")
    if batch_size < 1:
        raise InputError(f"`batch_size` {batch_size}: must be at least 1")
    if bundle is None and base is None:
        raise InputError("pass `bundle` (and optionally `base`), or `base` alone for the bare model")
    from melo_cli.cli import prompts as prompt_io
    from melo_cli.jobs.open import open_model

    decoding = Decoding(temperature, top_p, seed, chat, system, not no_handoff)  # checked before any model loads
    given = prompt_io.read(prompts, input_file)
    model = open_model(bundle, base, loading(device, dtype, device_map, max_memory, force_base, trust_remote_code))
    with progress_bar("generating", "prompts") as progress:
        bar = progress.add_task("generate", total=len(given), note="")
        for start in range(0, len(given), batch_size):
            chunk = given[start:start + batch_size]
            for prompt, pred in zip(chunk, model.predict([p.text for p in chunk], max_new_tokens, **asdict(decoding))):
                _print(prompt, pred, json_out)
            progress.update(bar, advance=len(chunk))


def _print(prompt, pred, json_out: bool) -> None:
    if not json_out:
        output = pred.label if pred.label is not None else pred.text
        sys.stdout.write(f"{one_line(prompt.text)} => {one_line(output)}\n")
        sys.stdout.flush()
        return
    record = {"id": prompt.id} if prompt.id is not None else {}
    record["prompt"] = prompt.text
    if pred.label is not None:
        record.update(label=pred.label, probabilities=pred.probabilities)
    else:
        record["text"] = pred.text
    route = pred.route
    record["route"] = {"cluster": route.cluster, "block": route.block, "distance": route.distance} \
        if route.routed else None
    emit_json(record)
