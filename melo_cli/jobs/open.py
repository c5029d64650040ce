"""Opening what a command works on: a bundle applied to its base (or the base alone), the router alone for
`melo route` (with encoder keys the base model is never loaded), or what `melo edit` would choose for a
model. How to load is one `Loading`, which every command builds from the same options."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from melo_cli import bundle as bundle_io
from melo_cli.api import MeloModel
from melo_cli.options import Loading
from melo_cli.model import backbones, bases, layers


def open_model(bundle: Path | None, base: str | None, loading: Loading = Loading()) -> MeloModel:
    """A bundle applied to its base (`base`: where the base is now, default the bundle's), or the base alone."""
    if bundle is not None:
        return MeloModel.from_pretrained(base, bundle=bundle, **asdict(loading))
    options = asdict(loading)
    options.pop("force_base")
    return MeloModel.from_pretrained(base, **options)


def router_for(path: Path, base: str | None, loading: Loading = Loading()):
    """What routing alone needs: (the bundle's router, texts -> routes). With sentence-encoder keys only the
    encoder is loaded, never the base model; with base-model keys the model runs to the key layer."""
    loaded = bundle_io.load(path)
    if loaded.config.key_source == "encoder":
        encoder = bases.load_encoder(loaded.config, backbones.resolve_device(loading.device),
                                     loaded.manifest.key_encoder or {}, loading.force_base, loading.trust_remote_code)
        router = loaded.router
        return router, lambda texts: router.route(encoder.keys(texts).numpy().astype(np.float32), texts)
    model = open_model(path, base, loading)
    return model.edited.router, model.edited.route


def plan(source: str, task: str = "auto") -> dict:
    """What `melo edit` would choose for this model, without editing."""
    backbone = backbones.load(source, task, "cpu", "auto")
    model = backbone.model
    lora_layers = layers.default_lora_layers(model, backbone.task)
    return {"model": source, "task": backbone.task,
            "stacks": [{"name": name, "blocks": len(stack)} for name, stack in layers.block_stacks(model)],
            "lora_layers": lora_layers, "key_layer": layers.default_key_layer(model, lora_layers)}
