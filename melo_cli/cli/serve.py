"""`melo route`, `melo export` and `melo forget`: what serving a bundle needs besides generation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from melo_cli.cli.app import (Device, DeviceMap, Dtype, ForceBase, MaxMemory, MeloCommand, Quiet, TrustRemoteCode,
                              Verbose, app, flag, loading, log_options, progress_bar)
from melo_cli.cli.console import emit_json, exits_cleanly
from melo_cli.errors import InputError


@app.command(cls=MeloCommand)
@exits_cleanly
def route(
    prompts: Annotated[Optional[list[str]], typer.Argument(help="Prompts, or - to read one per line from stdin.",
                                                           show_default=False, metavar="PROMPTS")] = None,
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="The bundle whose router decides.")] = ...,
    input_file: Annotated[Optional[Path], typer.Option("--input", "-i", help="Prompts as JSONL (objects with "
                                                       "'prompt' and an optional 'id'); - reads stdin.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model (default: the one the bundle names); loaded only "
                                                     "for base-model keys.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per key pass.")] = 32,
    force_base: ForceBase = False,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    dtype: Dtype = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Where each prompt goes, without generating: one JSON object per prompt with its route (cluster,
    block, adapter name as `melo export` writes it, distance, label) or null for the base model.

    With sentence-encoder keys only the encoder runs (the base model is not loaded); with base-model
    keys the model runs up to the key layer and stops.
    """
    log_options(verbose, quiet)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    from melo_cli.cli import prompts as prompt_io
    from melo_cli.jobs.open import router_for
    from melo_cli.jobs.export import adapter_name

    given = prompt_io.read(prompts, input_file)
    router, route_texts = router_for(bundle, base, loading(device, dtype, device_map, max_memory, force_base,
                                                           trust_remote_code))
    labels = router.labels
    with progress_bar("routing", "prompts") as progress:
        bar = progress.add_task("route", total=len(given), note="")
        for start in range(0, len(given), batch_size):
            chunk = given[start:start + batch_size]
            for prompt, found in zip(chunk, route_texts([p.text for p in chunk])):
                record = {"id": prompt.id} if prompt.id is not None else {}
                record["prompt"] = prompt.text
                record["route"] = ({"cluster": found.cluster, "block": found.block,
                                    "adapter": adapter_name(found.block), "distance": found.distance,
                                    "label": labels[found.cluster],
                                    "entities": [e["name"] for e in router.entities_of(found.cluster)]}
                                   if found.routed else None)
                emit_json(record)
            progress.update(bar, advance=len(chunk))


@app.command(cls=MeloCommand)
@exits_cleanly
def export(
    bundle: Annotated[Path, typer.Argument(help="The bundle to export.", show_default=False, metavar="BUNDLE")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (atomically).")] = ...,
    format: Annotated[str, typer.Option(help="peft: one standard peft LoRA adapter per block, and routing.json.")
                      ] = "peft",
    overwrite: Annotated[bool, flag("--overwrite", "Replace an existing export at -o.")] = False,
    base_name: Annotated[Optional[str], typer.Option(help="The base as the serving stack loads it (a hub id or "
                                                          "folder) for adapter_config.json; default: the base's "
                                                          "folder, or for a GGUF base the Hugging Face folder "
                                                          "melo made from it.")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Export a bundle for serving stacks that load one LoRA adapter per request (vLLM, SGLang, TGI):
    adapter folders block-K/ (adapter_config.json, adapter_model.safetensors) and routing.json (cluster
    -> adapter, radius, label). Pick the adapter per prompt with `melo route`."""
    log_options(verbose, quiet)
    if format != "peft":
        raise InputError(f"--format {format!r}: only peft is supported")
    from melo_cli.jobs.export import export_peft

    emit_json(export_peft(bundle, out, overwrite=overwrite, base_name=base_name))


@app.command(cls=MeloCommand)
@exits_cleanly
def forget(
    bundle: Annotated[Path, typer.Argument(help="The bundle to take edits from.", show_default=False,
                                           metavar="BUNDLE")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the result (may be BUNDLE itself).")] = ...,
    ids: Annotated[Optional[list[str]], typer.Option("--id", help="An edit id to forget (repeatable).")] = None,
    batches: Annotated[Optional[list[str]], typer.Option("--batch", help="Forget every edit of this batch "
                                                                         "(repeatable).")] = None,
    overwrite: Annotated[bool, flag("--overwrite", "Replace an existing bundle at -o.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another writer of -o.")] = 0.0,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Take edits back: the forgotten inputs get the base model's output bit for bit, a block no edit
    uses any more is zeroed, every other block stays bit-identical, and edits.jsonl and the history
    record what was forgotten and when. Atomic and locked like `melo edit`; no model is loaded."""
    log_options(verbose, quiet)
    from melo_cli.jobs.forget import forget as run_forget

    emit_json(run_forget(bundle, out, ids or [], batches or [], overwrite=overwrite, wait=wait))
