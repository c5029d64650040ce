"""The edit journey of `melo edit`: validate the files and options, lock the output, load the base,
train, write the bundle atomically; in the order that keeps failures cheap (a bad line costs a second, a
typo in a layer name fails before the weights load, nothing is written unless every edit is learned).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from melo_cli import bundle as bundle_io, training
from melo_cli.api import MeloModel
from melo_cli.bundle.locks import bundle_locks, check_wait
from melo_cli.edits import ReadReport, batches, read_edits, read_holdout
from melo_cli.errors import InputError
from melo_cli.options import EditOptions
from melo_cli.model import backbones, bases
from melo_cli.model.edited_model import EditedModel

log = logging.getLogger("melo")


def check_options(opts: EditOptions) -> None:
    """The run options the config does not hold, checked before anything loads (the config checks itself)."""
    if not isinstance(opts.eval_every, int) or opts.eval_every < 0:
        raise InputError(f"`eval_every` {opts.eval_every!r}: expected 0 (off) or a number of batches")
    check_wait(opts.wait)
    batches([], opts.batch_size)


@dataclass
class EditResult:
    summary: dict
    """What `melo edit` prints."""
    edited: EditedModel
    """The model as trained in this process (what the bundle on disk must reproduce)."""


def run_edit(base: str | None, edits_path: Path, out: Path, *, continue_from: Path | None, opts: EditOptions,
             on_batch: Callable[[training.BatchReport], None] | None = None,
             on_plan: Callable[[int], None] | None = None, report: ReadReport | None = None) -> EditResult:
    """The edit journey of `melo edit`: validate the files and options, lock, load, train, write atomically."""
    started = time.perf_counter()
    check_options(opts)
    out = bundle_io.output_for(out, opts.overwrite, source=continue_from)
    new_edits = read_edits(edits_path, skip_invalid=opts.skip_invalid, report=report)
    holdout = read_holdout(opts.locality) if opts.locality is not None else []
    negatives = [h.input for h in read_holdout(opts.negatives)] if opts.negatives is not None else []
    with bundle_locks([out], opts.wait):  # a source bundle is only read: it needs no lock (and may be read-only)
        for stale in bundle_io.clean_stale(out, holding_lock=True):
            log.info("removed %s, left by a killed run", stale)
        if continue_from is None and base is None:
            raise InputError("no base model: name one, or continue a bundle with `bundle`")
        loading = asdict(opts.loading)
        if continue_from is not None:
            log.info("loading base model of %s", continue_from)
            model = MeloModel.from_pretrained(base, bundle=continue_from, **loading)
        else:  # the task fits, the labels exist, the layers are there, what is left to melo is chosen: all
            # before the weights load (MeloModel.edit checks the labels again, for API callers: microseconds)
            model_config = backbones.load_config(base, opts.loading.trust_remote_code)
            training.check_targets(model_config, new_edits, edits_path, opts.config.task)
            config = bases.resolve_on_skeleton(model_config, opts.config)
            loading.pop("force_base")
            log.info("loading base model %s", base)
            model = MeloModel.from_pretrained(base, config=config, **loading)
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
