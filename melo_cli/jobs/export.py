"""A bundle as standard peft LoRA adapters, one per block, plus the routing table that picks one.

Serving stacks (vLLM, SGLang, TGI) load peft adapters and apply one per request; melo's router is the
part they lack. So each block k becomes the adapter `block-k`: `adapter_config.json` (peft's LoRA
config: target modules, r, lora_alpha, base model) and `adapter_model.safetensors` with peft's tensor
names, such that base + adapter `block-k` computes exactly what melo computes for a row routed to
block k (W x + scale * B_k A_k x, peft's lora_alpha / r being melo's scale). `routing.json` maps each
cluster to its adapter, radius and label, and says how keys are made; `melo route` gives the adapter
name for a prompt. Made from the bundle alone: no model is loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from safetensors.numpy import save as numpy_to_bytes

from melo_cli import bundle as bundle_io
from melo_cli.config import lora_scale
from melo_cli.errors import InputError, WriteFailed
from melo_cli.router.vocabulary import NEGATIVE

log = logging.getLogger("melo")

TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "classification": None}
"""peft's task type per melo task. Classifiers get none: peft's SEQ_CLS expects the classification head
in every adapter (as a module to save), and melo never changes the head, so the adapter would have to
carry the base model's own head; without a task type peft applies the LoRA and leaves the head as it is."""


def adapter_name(block: int) -> str:
    return f"block-{block}"


def peft_tensors(lora: dict, layers: list[str], block: int) -> dict[str, np.ndarray]:
    """Block `block`'s A (r x in) and B (out x r) under peft's names for each LoRA layer."""
    out = {}
    for name in layers:
        out[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(lora[f"{name}.lora_A"][block])
        out[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(lora[f"{name}.lora_B"][block])
    return out


def loadable_base(base: dict, given: str | None) -> str:
    """What peft and a serving stack can load as the base: `given` (--base-name, e.g. the hub id), else the
    Hugging Face folder melo made from a GGUF base (peft and vLLM cannot load a .gguf file), else the base
    as recorded (its absolute path, or its hub id)."""
    if given:
        return given
    if base.get("gguf"):
        from melo_cli.model.gguf import converted_folder

        folder = converted_folder(base["gguf"]["sha256"])
        if not (folder / "config.json").exists():
            log.warning("the GGUF base's Hugging Face folder %s is not on this machine: make it with `melo inspect "
                        "--model %s`, or pass --base-name with the model's hub id", folder, base.get("name"))
        return str(folder)
    return base.get("path") or base.get("name")


def adapter_config(loaded, conv1d: bool, base_name: str | None = None) -> dict:
    config = loaded.config
    rank = config.rank_per_block
    return {"peft_type": "LORA", "task_type": TASK_TYPES.get(config.task), "r": rank,
            "lora_alpha": lora_scale(rank, config.alpha) * rank,
            "lora_dropout": 0.0, "bias": "none", "target_modules": list(config.lora_layers),
            "fan_in_fan_out": conv1d, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "inference_mode": True, "base_model_name_or_path": loadable_base(loaded.base, base_name),
            "revision": None, "modules_to_save": None}


ENTITY_RULES = {
    "forms": "a cluster with entities is a candidate only if the prompt names one of them: in full (any case, "
             "any punctuation between words, a possessive after, a first word also as its first 3+ letters) or "
             "by one of its short forms, and not continued by more name words (a capitalised word or number "
             "after it in the same sentence, a capitalised word joined by 'of' or a comma before it, or before a "
             "short form any capitalised word); melo_cli/router/entities.py, names()",
    "whole": "a cluster with entities is a candidate only if the prompt names one of them as a whole name "
             "(melo bundles of format 1); melo_cli/router/subjects.py, names()",
}
HANDOFF = ("generate with the adapter until the continuation, whitespace-normalised, starts with the cluster's label "
           "(or can no longer become it: then drop the token that left it and any piece of a label word before it, "
           "back to the label's last whole word given or the prompt); then continue from the prompt and the "
           "tokens so far with the base model alone, which may not glue a token onto the label's last word nor "
           "give the label twice in a row (melo_cli/model/handoff.py, melo_cli/stutter.py); left on, the adapter "
           "repeats its label")


def routing_table(loaded) -> dict:
    """What an outside router needs to route as melo does: key settings, the rule per cluster (centre row in
    clusters.safetensors, radius, label, adapter, entities), the margin, the entity rule and the handoff."""
    router, config = loaded.router, loaded.config
    clusters = [{"cluster": c, "adapter": adapter_name(int(router.blocks[c])), "radius": float(router.radii[c]),
                 "label": router.labels[c], "entities": router.entities_of(c)}
                for c in range(len(router)) if not router.retired[c] and router.labels[c] != NEGATIVE]
    return {"format": "melo-routing/2", "base_model": loaded.base.get("name"),
            "keys": {"source": config.key_source, "encoder": config.key_encoder, "layer": config.key_layer,
                     "pooling": config.key_pooling, "metric": config.metric},
            "nearest": {"margin": config.margin, "rule": "the nearest candidate cluster routes if the key lies within "
                        "its radius and every candidate of another label (negatives too) is at least (1 + margin) "
                        "times as far"},
            "entities": {"match": config.entity_match, "rule": ENTITY_RULES[config.entity_match]},
            "handoff": HANDOFF, "default": None, "clusters": clusters,
            "note": "route each prompt with `melo route --bundle BUNDLE` (or the centres in the bundle's "
                    "clusters.safetensors); a prompt that routes to no cluster runs the base model (no adapter)"}


def export_peft(bundle: Path, out: Path, conv1d: bool | None = None, overwrite: bool = False,
                base_name: str | None = None) -> dict:
    """Write `out`: one peft adapter folder per block in use, routing.json; atomically. Returns a summary."""
    loaded = bundle_io.load(bundle)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; pass `overwrite` to replace it")
    if out.exists() and not (out / "routing.json").is_file():
        raise InputError(f"{out}: exists and is not a melo export; refusing to replace it")
    if conv1d is None:
        conv1d = loaded.base.get("architecture", "").startswith("GPT2")
    table = routing_table(loaded)
    used = sorted(loaded.router.live_blocks())
    out.parent.mkdir(parents=True, exist_ok=True)
    config = adapter_config(loaded, conv1d, base_name)
    try:
        with bundle_io.replacing(out) as tmp:
            for block in used:
                folder = tmp / adapter_name(block)
                folder.mkdir()
                bundle_io.write_text(folder / "adapter_config.json", json.dumps(config, indent=2) + "\n")
                bundle_io.write_bytes(folder / "adapter_model.safetensors",
                                      numpy_to_bytes(peft_tensors(loaded.lora, loaded.config.lora_layers, block),
                                                     metadata={"format": "pt"}))
            bundle_io.write_text(tmp / "routing.json", json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise WriteFailed(f"{out}: the export could not be written ({exc.strerror or exc}); nothing was replaced") \
            from None
    return {"export": str(out), "format": "peft", "adapters": len(used), "clusters": len(table["clusters"]),
            "rank": loaded.config.rank_per_block, "target_modules": len(loaded.config.lora_layers)}
