"""The two journeys through melo: edit (edits -> trained bundle) and apply (bundle -> edited model).

The CLI parses options and prints; this module does the work in the order that keeps failures
cheap: validate input, then load the model, then train, then write atomically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import backbones, bases, bundle as bundle_io, layers, training
from .api import MeloModel
from .config import MeloConfig
from .edited_model import EditedModel
from .edits import ReadReport, batches, read_edits, read_holdout
from .errors import InputError
from .locks import bundle_locks, check_wait

log = logging.getLogger("melo")


@dataclass
class EditOptions:
    """How `melo edit` runs; what the bundle is made of is `config` (MeloConfig, checked on creation)."""

    config: MeloConfig = field(default_factory=MeloConfig)
    negatives: Path | None = None
    """Inputs whose outputs must not change: their keys cap the radii of edit clusters."""
    batch_size: int = 5
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    max_memory: str | dict | None = None
    skip_invalid: bool = False
    force_base: bool = False
    trust_remote_code: bool = False
    overwrite: bool = False
    eval_every: int = 0
    """Append a retention row to history.jsonl every this many batches (0: never)."""
    locality: Path | None = None
    """Holdout inputs for the history's locality column."""
    allow_partial: bool = False
    """Write the bundle even when some edits are not learned (else exit 4 and write nothing)."""


def check_options(opts: EditOptions) -> None:
    """The run options the config does not hold, checked before anything loads (the config checks itself)."""
    if not isinstance(opts.eval_every, int) or opts.eval_every < 0:
        raise InputError(f"`eval_every` {opts.eval_every!r}: expected 0 (off) or a number of batches")


def open_bundle(path: str | Path, *, base: str | None = None, device: str = "auto", dtype: str = "auto",
                force_base: bool = False, trust_remote_code: bool = False, device_map: str | None = None,
                max_memory: str | dict | None = None) -> tuple[MeloModel, EditedModel]:
    """A bundle applied to its base model (checked against the fingerprint): (MeloModel, its EditedModel)."""
    model = MeloModel.from_pretrained(base, bundle=path, device=device, dtype=dtype, force_base=force_base,
                                      trust_remote_code=trust_remote_code, device_map=device_map,
                                      max_memory=max_memory)
    return model, model.edited


def router_for(path: str | Path, *, base: str | None = None, device: str = "auto", dtype: str = "auto",
               force_base: bool = False, trust_remote_code: bool = False, device_map: str | None = None,
               max_memory: str | dict | None = None):
    """What routing alone needs: (the bundle's router, texts -> routes). With sentence-encoder keys only
    the encoder is loaded, never the base model; with base-model keys the model runs to the key layer."""
    loaded = bundle_io.load(path)
    if loaded.config.key_source == "encoder":
        import numpy as np

        encoder = bases.load_encoder(loaded.config, backbones.resolve_device(device), loaded.manifest, force_base,
                                     trust_remote_code)
        router = loaded.router
        return router, lambda texts: router.route(encoder.keys(texts).numpy().astype(np.float32), texts)
    _, edited = open_bundle(path, base=base, device=device, dtype=dtype, force_base=force_base,
                            trust_remote_code=trust_remote_code, device_map=device_map, max_memory=max_memory)
    return edited.router, edited.route


@dataclass
class EditResult:
    summary: dict
    """What `melo edit` prints."""
    edited: EditedModel
    """The model as trained in this process (what the bundle on disk must reproduce)."""


def run_edit(base: str | None, edits_path: Path, out: Path, *, continue_from: Path | None, opts: EditOptions,
             on_batch: Callable[[training.BatchReport], None] | None = None,
             on_plan: Callable[[int], None] | None = None,
             report: ReadReport | None = None, wait: float = 0.0) -> EditResult:
    """The edit journey of `melo edit`: validate the files and options, lock, load, train, write atomically."""
    started = time.perf_counter()
    check_options(opts)
    check_wait(wait)
    out = bundle_io.output_for(out, opts.overwrite, source=continue_from)
    new_edits = read_edits(edits_path, skip_invalid=opts.skip_invalid, report=report)
    batches(new_edits, opts.batch_size)  # checks --batch-size before anything loads
    holdout = read_holdout(opts.locality) if opts.locality is not None else []
    negatives = [h.input for h in read_holdout(opts.negatives)] if opts.negatives is not None else []
    with bundle_locks([out], wait):  # a source bundle is only read: it needs no lock (and may be read-only)
        for stale in bundle_io.clean_stale(out, holding_lock=True):
            log.info("removed %s, left by a killed run", stale)
        if continue_from is None and base is None:
            raise InputError("no base model: name one, or continue a bundle with `bundle`")
        if continue_from is None:  # the task fits, the labels exist, the layers are there: before weights load
            model_config = backbones.load_config(base, opts.trust_remote_code)
            training.check_targets(model_config, new_edits, edits_path, opts.config.task)
            _check_layer_names(model_config, opts.config)
        log.info("loading base model %s", base or f"of {continue_from}")
        if continue_from is not None:
            model = MeloModel.from_pretrained(base, bundle=continue_from, device=opts.device, dtype=opts.dtype,
                                              force_base=opts.force_base, trust_remote_code=opts.trust_remote_code,
                                              device_map=opts.device_map, max_memory=opts.max_memory)
        else:
            model = MeloModel.from_pretrained(base, config=opts.config, device=opts.device, dtype=opts.dtype,
                                              trust_remote_code=opts.trust_remote_code, device_map=opts.device_map,
                                              max_memory=opts.max_memory)
        summary = model.edit(new_edits, batch_size=opts.batch_size, negatives=negatives,
                             allow_partial=opts.allow_partial, on_batch=on_batch, on_plan=on_plan, source=edits_path,
                             eval_every=opts.eval_every, holdout=holdout)
        log.info("writing bundle %s", out)
        model.save_pretrained(out, overwrite=True)
        log.info("wrote bundle %s", out)
    summary.pop("seconds")
    summary = {"bundle": str(out), "base_model": model.base["name"], "task": model.config.task, **summary,
               "skipped_lines": len(report.skipped) if report else 0, "history_rows": len(model.history),
               "seconds": round(time.perf_counter() - started, 3)}
    return EditResult(summary, model.edited)


def _check_layer_names(model_config, config: MeloConfig) -> None:
    """Asked-for LoRA and key layers exist in the model's module tree (built from its config alone)."""
    if not config.lora_layers and not config.key_layer:
        return
    tree = backbones.skeleton(model_config, config.task)
    if tree is None:
        return
    chosen = (layers.resolve_lora_layers(tree, config.lora_layers) if config.lora_layers
              else layers.default_lora_layers(tree, backbones.task_for(model_config, config.task)))
    if config.key_layer:
        layers.check_key_below(tree, config.key_layer, chosen)


def bare_model(source: str, *, task: str = "auto", device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False, device_map: str | None = None,
               max_memory: str | dict | None = None) -> EditedModel:
    """The base model alone, behind the same interface as an edited one (no LoRA, no router)."""
    backbone = backbones.load(source, task, device, dtype, trust_remote_code, device_map, max_memory)
    model = backbone.model
    lora_layers = layers.default_lora_layers(model, backbone.task)
    config = MeloConfig(task=backbone.task, key_layer=layers.default_key_layer(model, lora_layers))  # no LoRA layers
    return EditedModel(backbone, config)


def plan(source: str, task: str = "auto") -> dict:
    """What `melo edit` would choose for this model, without editing."""
    backbone = backbones.load(source, task, "cpu", "auto")
    model = backbone.model
    lora_layers = layers.default_lora_layers(model, backbone.task)
    return {"model": source, "task": backbone.task,
            "stacks": [{"name": name, "blocks": len(stack)} for name, stack in layers.block_stacks(model)],
            "lora_layers": lora_layers, "key_layer": layers.default_key_layer(model, lora_layers)}
