"""`melo edit`: train edits into a bundle. Every setting's default and help text come from MeloConfig and
EditOptions (config.setting); this command only parses what a shell writes ("auto", comma lists)."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from melo_cli.cli.app import (Device, DeviceMap, Dtype, ForceBase, MaxMemory, MeloCommand, Quiet, TrustRemoteCode,
                              Verbose, app, loading, log_options, option, progress_bar, switch)
from melo_cli.cli.console import emit_json, exits_cleanly, stderr
from melo_cli.config import MeloConfig, default_of
from melo_cli.errors import InputError
from melo_cli.options import EditOptions

log = logging.getLogger("melo")
C, E = MeloConfig, EditOptions


@app.command(cls=MeloCommand)
@exits_cleanly
def edit(
    base: Annotated[Optional[str], typer.Argument(help="Base model: a local folder, a Hugging Face hub id or a .gguf "
                                                       "file. Optional with --bundle (the bundle's base).",
                                                  show_default=False, metavar="BASE")] = None,
    edits: Annotated[Optional[Path], typer.Argument(help="Edits: JSONL {\"input\", \"target\", \"rephrases\", \"id\", "
                                                         "\"subject\", \"batch\"}, or one JSON array; CounterFact/zsRE "
                                                         "names work too; - reads stdin.", show_default=False,
                                                    metavar="EDITS")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write (built aside, then swapped in).")] = ...,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Continue this bundle (left untouched unless it "
                                                                    "is also -o).")] = None,
    batch_size: Annotated[int, option(E, "batch_size")] = default_of(E, "batch_size"),
    rank_per_block: Annotated[int, option(C, "rank_per_block")] = default_of(C, "rank_per_block"),
    lora_layers: Annotated[Optional[str], option(C, "lora_layers")] = None,
    key_layer: Annotated[Optional[str], option(C, "key_layer")] = None,
    key_pooling: Annotated[str, option(C, "key_pooling")] = default_of(C, "key_pooling"),
    key_source: Annotated[str, option(C, "key_source")] = default_of(C, "key_source"),
    key_encoder: Annotated[Optional[str], option(C, "key_encoder")] = None,
    negatives: Annotated[Optional[Path], option(E, "negatives")] = None,
    metric: Annotated[Optional[str], option(C, "metric", show_default=False)] = None,
    init_radius: Annotated[str, option(C, "init_radius")] = "auto",
    radius_policy: Annotated[Optional[str], option(C, "radius_policy", show_default=False)] = None,
    margin: Annotated[Optional[float], option(C, "margin", show_default=False)] = None,
    block_per: Annotated[str, option(C, "block_per")] = default_of(C, "block_per"),
    contexts: Annotated[int, option(C, "contexts")] = default_of(C, "contexts"),
    entities: Annotated[str, option(C, "entities")] = default_of(C, "entities"),
    chat_rows: Annotated[bool, switch(C, "chat_rows", "--chat-rows/--no-chat-rows")] = default_of(C, "chat_rows"),
    block_dtype: Annotated[str, option(C, "block_dtype")] = default_of(C, "block_dtype"),
    lr: Annotated[float, option(C, "lr")] = default_of(C, "lr"),
    max_steps: Annotated[str, option(C, "max_steps")] = default_of(C, "max_steps"),
    loss_threshold: Annotated[float, option(C, "loss_threshold")] = default_of(C, "loss_threshold"),
    allow_partial: Annotated[bool, switch(E, "allow_partial", "--allow-partial")] = False,
    task: Annotated[str, option(C, "task")] = default_of(C, "task"),
    seed: Annotated[int, option(C, "seed")] = default_of(C, "seed"),
    skip_invalid: Annotated[bool, switch(E, "skip_invalid", "--skip-invalid")] = False,
    overwrite: Annotated[bool, switch(E, "overwrite", "--overwrite")] = False,
    wait: Annotated[float, option(E, "wait")] = default_of(E, "wait"),
    eval_every: Annotated[int, option(E, "eval_every")] = default_of(E, "eval_every"),
    locality: Annotated[Optional[Path], option(E, "locality")] = None,
    force_base: ForceBase = False,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    dtype: Dtype = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train edits into a bundle: a LoRA block per edit cluster, a router cluster per edit key.

    Prints a JSON summary on stdout. An edit with the input of an earlier edit and another target
    is a correction: it supersedes the earlier one.

    Examples:

      melo edit sample_models/stories260K sample_edits/counterfact-20.jsonl -o bundle/

      melo edit sample_edits/zsre-20.jsonl --bundle bundle/ -o bundle-v2/
    """
    log_options(verbose, quiet)
    from melo_cli.edits import ReadReport
    from melo_cli.jobs.edit import run_edit

    if edits is None and base is not None and bundle is not None:
        base, edits = None, Path(base)  # `melo edit EDITS --bundle OLD -o OUT`
    if edits is None:
        raise InputError("missing EDITS: the JSONL file of edits")
    config = MeloConfig(task=task, lora_layers=_layer_names(lora_layers), key_layer=key_layer,
                        rank_per_block=rank_per_block, block_dtype=block_dtype, key_pooling=key_pooling,
                        key_source=key_source, key_encoder=key_encoder, metric=metric, margin=margin,
                        radius_policy=radius_policy, block_per=block_per, contexts=contexts, entities=entities,
                        chat_rows=chat_rows,
                        init_radius=_radius(init_radius), lr=lr, max_steps=_steps(max_steps),
                        loss_threshold=loss_threshold, seed=seed)
    opts = EditOptions(config=config, loading=loading(device, dtype, device_map, max_memory, force_base,
                                                      trust_remote_code),
                       batch_size=batch_size, negatives=negatives, skip_invalid=skip_invalid, overwrite=overwrite,
                       wait=wait, eval_every=eval_every, locality=locality, allow_partial=allow_partial)
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

        summary = run_edit(base, edits, out, continue_from=bundle, opts=opts, on_batch=on_batch, on_plan=on_plan,
                           report=report).summary
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
        raise InputError(f"`init_radius` {value!r}: expected auto or a finite number > 0")
    return radius


def _steps(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.strip().isdigit() or int(value) < 1:
        raise InputError(f"`max_steps` {value!r}: expected auto or a whole number >= 1")
    return int(value)


def _layer_names(value: str | None) -> list[str] | None:
    """--lora-layers: comma-separated names; given but empty is refused (it used to mean the default)."""
    if value is None:
        return None
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise InputError(f"`lora_layers` {value!r}: expected comma-separated module names")
    return names
