"""The Python API: a base model with melo edits, loaded, edited, run and saved like a transformers model.

    from melo_cli import MeloModel

    model = MeloModel.from_pretrained("path/to/SmolLM2.gguf")      # a folder, a hub id or a GGUF file
    model.edit([{"input": "The mother tongue of Danielle Darrieux is", "target": "English",
                 "subject": "Danielle Darrieux"}])
    model.generate(["Danielle Darrieux's mother tongue is"])       # ["English ..."]
    model.save_pretrained("bundle/")                                # atomic: a temp dir, then a rename
    again = MeloModel.from_pretrained(bundle="bundle/")            # the base comes from the manifest

The CLI is a shell over this class: the same checks, the same errors (an error here names the
argument, e.g. `edits: record 2: field 'target'`), the same bundle on disk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from melo_cli import bundle as bundle_io, clock, inputs, training
from melo_cli.config import MeloConfig, default_of
from melo_cli.edits import Edit, Holdout, auto_id, batches
from melo_cli.errors import BundleError, InputError, Unlearned
from melo_cli.eval import history as retention, metrics, report
from melo_cli.model import backbones, bases, lengths, producible
from melo_cli.model.edited_model import EditedModel, Prediction
from melo_cli.options import EditOptions
from melo_cli.router.vocabulary import Route

log = logging.getLogger("melo")


class MeloModel:
    """A base model, its LoRA blocks and router, and the edits they hold (the contents of a bundle)."""

    def __init__(self, edited: EditedModel, base: dict, *, edits: list[Edit] | None = None,
                 batches_done: int = 0, history: list[dict] | None = None, key_encoder: dict | None = None):
        self.edited = edited
        self.base = base
        """The manifest's record of the base model (name, path, fingerprint, dtype, GGUF file)."""
        self.edits: list[Edit] = list(edits or [])
        """Every edit made so far, in order (a superseded or forgotten one keeps its place, marked): what
        the bundle's edits.jsonl holds, one Edit per record."""
        self.batches_done = batches_done
        self.history: list[dict] = list(history or [])
        self.key_encoder = key_encoder

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, base: str | Path | None = None, *, bundle: str | Path | None = None,
                        config: MeloConfig | None = None, device: str = "auto", dtype: str = "auto",
                        force_base: bool = False, trust_remote_code: bool = False, device_map: str | None = None,
                        max_memory: dict | str | None = None, **settings) -> "MeloModel":
        """A base model (folder, hub id or GGUF file), with a bundle's edits applied if one is given.

        Without a bundle, the new bundle's settings are `config`, or MeloConfig(**settings) by the
        names of `melo edit`'s options (rank_per_block=4, key_source="base", task="seq2seq", ...);
        what they leave open is chosen from the model. With a bundle, its own settings hold and
        `base` only says where its base model is now. `device_map` ("auto") and `max_memory` ({0: "20GiB",
        "cpu": "8GiB"} or "0=20GiB,cpu=8GiB") spread a base too large for one device (melo_cli/model/placement.py).
        """
        placed = {"device_map": device_map, "max_memory": max_memory}
        if bundle is not None:
            if settings or config is not None:
                raise InputError("a bundle keeps its own settings: pass no config or settings with `bundle`")
            return cls._from_bundle(Path(bundle), base, device, dtype, force_base, trust_remote_code, placed)
        if base is None:
            raise InputError("no base model: name one as `base`, or give a `bundle`")
        if config is None:
            config = inputs.make_config(**settings)
        elif settings:
            raise InputError("pass the settings in `config` or as keywords, not both")
        backbone = backbones.load(str(base), config.task, device, dtype, trust_remote_code, **placed)
        info = bases.base_info(backbone, dtype)  # before LoRA is attached
        config = bases.resolve_config(backbone.model, backbone.task, config) if config.unresolved else config
        bases.check_layers(backbone, config)
        encoder = bases.load_encoder(config, backbone.device, None, False, trust_remote_code)
        key_encoder = ({"name": config.key_encoder, "fingerprint": backbones.fingerprint(encoder.model)}
                       if encoder is not None else None)
        return cls(EditedModel(backbone, config, None, encoder), info, key_encoder=key_encoder)

    @classmethod
    def _from_bundle(cls, bundle: Path, base, device: str, dtype: str, force_base: bool,
                     trust_remote_code: bool, placed: dict) -> "MeloModel":
        """A bundle (validated on load) applied to its base model, checked against the fingerprint."""
        loaded = bundle_io.load(bundle)
        source = bases.locate_base(loaded.base, bundle, None if base is None else str(base))
        if dtype == "auto":
            dtype = loaded.base.get("dtype", "auto")
        backbone = backbones.load(source, loaded.config.task, device, dtype, trust_remote_code, **placed)
        bases.check_base(backbone, loaded.base, force_base)
        bases.check_layers(backbone, loaded.config, bundle)
        encoder = bases.load_encoder(loaded.config, backbone.device, loaded.manifest.key_encoder or {}, force_base,
                                     trust_remote_code)
        edited = EditedModel(backbone, loaded.config, loaded.router, encoder)
        try:
            edited.load_lora_state(loaded.lora)
        except (KeyError, ValueError) as exc:
            raise BundleError(f"{bundle / bundle_io.LORA}: does not fit the model: {exc}") from None
        return cls(edited, loaded.base, edits=loaded.edits, batches_done=loaded.manifest.counts["batches"],
                   history=loaded.history,
                   key_encoder=loaded.manifest.key_encoder)

    @property
    def config(self):
        """The settings the bundle is built with (MeloConfig)."""
        return self.edited.config

    @property
    def model(self):
        """The underlying transformers model, with melo's LoRA layers in place."""
        return self.edited.backbone.model

    @property
    def tokenizer(self):
        return self.edited.backbone.tokenizer

    @property
    def live_edits(self) -> list[Edit]:
        return [e for e in self.edits if e.live]

    # -- editing ------------------------------------------------------------------------------
    def edit(self, edits: Iterable[Edit | dict], *, batch_size: int = default_of(EditOptions, "batch_size"),
             negatives: Iterable[str] = (), allow_partial: bool = False,
             on_batch: Callable[[training.BatchReport], None] | None = None,
             on_plan: Callable[[int], None] | None = None, eval_every: int = 0,
             holdout: Iterable[Holdout | dict | str] = (), source: Path | None = None) -> dict:
        """Train edits (Edit objects or dicts with input, target and optional rephrases, subject, id),
        `batch_size` per batch, each batch into its own LoRA blocks.

        Raises Unlearned (and changes nothing) if some target is not learned, unless allow_partial.
        Every `eval_every` batches a retention row (edit success of the batch and of all earlier
        edits, locality on `holdout`) goes to `history`. `on_plan` hears the number of batches,
        `on_batch` each batch's report; `source` names the file the edits came from, for messages.
        Returns a summary dict."""
        started = time.perf_counter()
        new = self._with_ids(training.sort_new_edits(inputs.as_edits(edits, "edits"), self.live_edits, source))
        groups = batches(new, batch_size)
        negatives, kept = list(negatives), inputs.as_holdout(holdout)
        inputs.check_edits(self.edited.backbone, new, kept, source, self.config.task)  # before any step
        if on_plan is not None:
            on_plan(len(groups))
        log.info("training %d edits in %d batches", len(new), len(groups))
        snapshot = self._snapshot()
        history: list[dict] = []
        recorder = retention.recorder(self.edited, self.live_edits, new, groups, kept, history, eval_every, started,
                                      self.batches_done, on_batch)
        result = training.run(self.edited, self.edits, new, groups, recorder, negatives) if new else \
            training.RunResult([], [])
        all_edits = self.edits + new
        try:
            training.check_learned(result, all_edits, source, allow_partial, self.config.max_steps,
                                   explain=lambda n: producible.first_miss(self.edited, all_edits[n]))
        except Unlearned:
            self._restore(snapshot)
            raise
        self._record(new, groups, result)
        self.history += history
        lost = result.unreachable
        if lost:
            log.warning("%d edit(s) do not route to a cluster of their target: %s", len(lost),
                        ", ".join(str(n) for n in lost[:10]))
        reports = result.reports
        return {"edits": len(new), "total_edits": len(self.edits), "live_edits": len(self.live_edits),
                "superseded": len(result.superseded), "batches": len(groups), "clusters": len(self.edited.router or []),
                "negatives": len(negatives), "blocks": self.edited.n_blocks,
                "init_radius": self.config.init_radius, "steps_per_batch": [r.steps for r in reports],
                "converged_batches": sum(r.converged for r in reports), "unlearned_edits": len(result.unlearned),
                "unrouted_edits": len(lost), "seconds": round(time.perf_counter() - started, 3)}

    def _with_ids(self, new: list[Edit]) -> list[Edit]:
        """The new edits, each with an id: one that came without gets `auto_id` (what the commands print
        and `melo forget --id` accepts)."""
        taken = {e.id for e in self.edits + new if e.id is not None}
        out = []
        for position, edit in enumerate(new, len(self.edits)):
            if edit.id is None:
                edit = replace(edit, id=auto_id(position, taken))
                taken.add(edit.id)
            out.append(edit)
        return out

    def _snapshot(self) -> dict:
        """What an edit call changes, to put back when it is refused (Unlearned)."""
        import copy
        return {"lora": {k: v.clone() for k, v in self.edited.lora_state().items()},
                "router": copy.deepcopy(self.edited.router) if self.edited.router is not None else None,
                "config": self.config}

    def _restore(self, snapshot: dict) -> None:
        self.edited.load_lora_state(snapshot["lora"])
        self.edited.router = snapshot["router"]
        self.edited.config = snapshot["config"]

    def _record(self, new: list[Edit], groups: list[list[int]], result: training.RunResult) -> None:
        """The new edits as the bundle keeps them (batch, block, entity), the edits they supersede marked."""
        offset = len(self.edits)
        batch_of = {p: (report.batch, report.edit_blocks.get(offset + p, report.block))
                    for report, group in zip(result.reports, groups) for p in group}
        kept = []
        for position, edit in enumerate(new):  # in edit-number order: edit n is line n of edits.jsonl
            batch, block = batch_of[position]
            name, short = result.entities.get(offset + position) or (None, ())
            kept.append(replace(edit, batch=edit.batch if edit.batch is not None else str(self.batches_done + batch + 1),
                                block=block, entity=name, entity_short=tuple(short)))
        edits = self.edits + kept
        now = clock.now()
        for old, by in result.superseded.items():
            edits[old] = replace(edits[old], superseded={"by": by, "by_id": edits[by].id, "at": now})
            log.info("edit %s (%r -> %r) is superseded by %s (-> %r)", edits[old].id, edits[old].input,
                     edits[old].target, edits[by].id, edits[by].target)
        self.edits = edits
        self.batches_done += len(groups)

    # -- running ------------------------------------------------------------------------------
    def predict(self, prompts: list[str], max_new_tokens: int = 20, *, temperature: float = 0.0, top_p: float = 1.0,
                seed: int | None = None, chat: bool = False, system: str | None = None,
                handoff: bool = True) -> list[Prediction]:
        """Text (or label) per prompt, with the route each took: greedy unless `temperature` > 0
        (then sampled, with `top_p` and a `seed` for repeatable draws); `chat` wraps each prompt in the
        tokenizer's chat template (after an optional `system` turn), while the router still sees the
        prompt as written. A routed prompt's block gives its target, then the base model continues
        (`handoff`; False keeps the block on for every token). Generation stops at EOS."""
        from melo_cli.model.generation import Decoding

        inputs.check_prompts(prompts)
        if max_new_tokens < 1:
            raise InputError(f"expected a whole number >= 1, got {max_new_tokens}", field="max_new_tokens")
        decoding = Decoding(temperature, top_p, seed, chat, system, handoff)
        return self.edited.predict(list(prompts), max_new_tokens=max_new_tokens, decoding=decoding)

    def generate(self, prompts: list[str], max_new_tokens: int = 20, **options) -> list[str]:
        """Continuations (classifiers: labels), one per prompt; `options` as for `predict`."""
        return [p.text if p.label is None else p.label for p in self.predict(prompts, max_new_tokens, **options)]

    def route(self, prompts: list[str]) -> list[Route]:
        """Where each prompt goes (cluster, distance, block), without running the model past the keys."""
        inputs.check_prompts(prompts)
        return self.edited.route(list(prompts))

    def evaluate(self, edits: Iterable[Edit | dict] | None = None, holdout: Iterable[Holdout | dict | str] = (),
                 mode: str = "generate", batch_size: int = 32, fluency_tokens: int = report.FLUENCY_TOKENS, *,
                 source: Path | None = None, on_plan: Callable[[int], None] | None = None,
                 advance: Callable[[int], None] | None = None) -> dict:
        """Edit success, generality, locality, fluency (and the rest of `melo eval`) on these edits
        (default: the live edits this model holds; a superseded or forgotten one is not scored) and holdout
        inputs. `on_plan` hears how many inputs will run and `advance` each step; `source` names where the
        edits came from, for messages."""
        modes = report.modes_of(mode)
        scored = self.live_edits if edits is None else metrics.live_only(inputs.as_edits(edits, "edits"), self.edits)
        kept = inputs.as_holdout(holdout)
        lengths.check_edits(self.edited.backbone, scored, source)
        lengths.check_holdout(self.edited.backbone, kept)
        if on_plan is not None:
            on_plan(report.work(scored, kept, modes, fluency_tokens))
        return report.evaluate(self.edited, scored, kept, modes, batch_size, advance or (lambda n: None),
                               bundle_edits=self.edits, fluency_tokens=fluency_tokens)

    # -- saving -------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the bundle: built in a temp dir beside `path`, then renamed into place (never half-written)."""
        out = Path(path)
        out = bundle_io.output_for(out, overwrite)
        if self.edited.router is None:
            raise InputError("no edits yet: edit before saving", field="path")
        bundle_io.write(out, config=self.config, lora=self.edited.lora_state(), router=self.edited.router,
                        edits=self.edits, base=self.base, batches=self.batches_done, history=self.history,
                        key_encoder=self.key_encoder)
        return Path(path)
