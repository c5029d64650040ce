"""EditedModel: a base model with BlockLoRA layers, a key hook and a router attached.

This is the one place where the pieces meet at run time: `tasks` makes tensors, the key hook at
the key layer pools the input's key during the forward pass and asks the router for each row's
block, and the BlockLoRA layers read that decision from the model's own `Routes` object.
"""

from __future__ import annotations

import logging

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from melo_cli import tasks
from melo_cli.config import MeloConfig
from melo_cli.model import prefix
from melo_cli.model.backbones import Backbone
from melo_cli.model.generation import Decoding
from melo_cli.model.keys import SentenceEncoder, hidden_of, pool
from melo_cli.model.lora import BlockLoRA
from melo_cli.model.placement import execution_device
from melo_cli.model.predict import Prediction, no_routes, predict
from melo_cli.model.prefix import FrozenPrefix
from melo_cli.model.route_scope import Routes
from melo_cli.router.router import Router
from melo_cli.router.vocabulary import NO_BLOCK, Route


log = logging.getLogger("melo")


class _KeysTaken(Exception):
    """Raised by the key hook to stop a forward pass once the keys are known."""

    def __init__(self, keys: torch.Tensor):
        super().__init__("keys taken")
        self.keys = keys


@dataclass
class TargetScores:
    """Teacher-forced scores per row: summed NLL of the target, its token count, whether every target
    token is the argmax, the route taken, and (if asked) the base model's NLL."""

    nll: torch.Tensor
    tokens: torch.Tensor
    hits: torch.Tensor
    routes: list[Route]
    base_nll: torch.Tensor | None = None


class EditedModel:
    """Owns the base model's LoRA layers, the routing state and the router."""

    def __init__(self, backbone: Backbone, config: MeloConfig, router: Router | None = None,
                 encoder: SentenceEncoder | None = None):
        self.backbone, self.config, self.router, self.encoder = backbone, config, router, encoder
        if (config.key_source == "encoder") != (encoder is not None):
            raise ValueError("an encoder is needed exactly when key_source is 'encoder'")
        self.routes = Routes()
        self.layers: dict[str, BlockLoRA] = {}
        model = backbone.model
        modules = dict(model.named_modules())
        for name in config.lora_layers or ():  # None: the bare base model (MeloModel.from_pretrained without a bundle)
            layer = BlockLoRA(modules[name], self.routes, config.rank_per_block, config.alpha,
                              getattr(torch, config.block_dtype), execution_device(modules, name))
            modules[name].register_forward_hook(lambda module, args, out, layer=layer: layer.add_to(args[0], out))
            self.layers[name] = layer
        self._hook = (modules[config.key_layer].register_forward_hook(self._on_key_layer)
                      if encoder is None else None)

    # -- routing ------------------------------------------------------------------------------
    def _on_key_layer(self, module: nn.Module, args, output) -> None:
        scope = self.routes.scope
        if scope is None or scope.block_ids is not None or scope.on_keys is None:
            return
        keys = pool(hidden_of(output), scope.key_mask, self.config.key_pooling)
        scope.block_ids = scope.on_keys(keys).to(keys.device)

    def _route_keys(self, keys: torch.Tensor, texts: list[str], found: list[Route]) -> torch.Tensor:
        if self.router is None or len(self.router) == 0:
            routes = [Route(None, None, NO_BLOCK) for _ in range(keys.shape[0])]
        else:
            routes = self.router.route(keys.detach().cpu().numpy(), texts)
        found.extend(routes)
        return torch.tensor([r.block for r in routes], dtype=torch.long)

    @contextmanager
    def routed(self, key_mask: torch.Tensor, texts: list[str]) -> Iterator[list[Route]]:
        """A scope where each row is routed by its own key; yields the routes once decided.

        Base-model keys are taken by the hook during the forward; encoder keys before it.
        """
        found: list[Route] = []
        if self.encoder is not None:
            ids = self._route_keys(self.encoder.keys(texts), texts, found).to(key_mask.device)
            with self.routes.fixed(ids):
                yield found
            return
        with self.routes.by_key(key_mask, lambda keys: self._route_keys(keys, texts, found)):
            yield found

    @contextmanager
    def fixed_routes(self, routes: list[Route], device) -> Iterator[list[Route]]:
        """A scope with routes decided beforehand (the router saw other texts than the model will)."""
        with self.routes.fixed(torch.tensor([r.block for r in routes], dtype=torch.long, device=device)):
            yield list(routes)

    @property
    def n_blocks(self) -> int:
        return max((layer.n_blocks for layer in self.layers.values()), default=0)

    # -- keys ---------------------------------------------------------------------------------
    @torch.no_grad()
    def keys(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(n, dim) float32 keys of the inputs (each base forward stops at the key layer)."""
        if self.encoder is not None:
            return self.encoder.keys(texts).numpy().astype(np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tasks.encode(self.backbone, texts[start:start + batch_size]).to(self.backbone.device)
            with self.routes.by_key(enc.key_mask, _stop_with_keys):
                try:
                    self.forward(enc.inputs)
                except _KeysTaken as taken:
                    out.append(taken.keys.float().cpu().numpy())
                    continue
            raise RuntimeError(f"the key layer {self.config.key_layer} did not run")
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    @property
    def task(self) -> tasks.Task:
        return tasks.task_of(self.backbone)

    def _forward(self, inputs: dict[str, torch.Tensor]):
        return self.task.forward(self.backbone.model, inputs)

    # -- outputs ------------------------------------------------------------------------------
    def teacher_forced(self, inputs: list[str], targets: list[str], route: bool = True
                       ) -> tuple[tasks.Encoded, torch.Tensor, list[Route]]:
        """Logits for input+target with each row routed by its key (or the bare base model)."""
        enc = tasks.encode(self.backbone, inputs, targets).to(self.backbone.device)
        with torch.no_grad():
            if not route:
                return enc, self.forward(enc.inputs).logits, [Route(None, None, NO_BLOCK)] * len(inputs)
            with self.routed(enc.key_mask, inputs) as found:
                logits = self.forward(enc.inputs).logits
        return enc, logits, found

    @torch.no_grad()
    def target_scores(self, inputs: list[str], targets: list[str], route: bool = True,
                      base: FrozenPrefix | None = None) -> TargetScores:
        """Teacher-forced scores of each row's target, routed by its key (or the bare base model).

        Logits are computed only where a target is scored (tasks.narrowed) when the model allows it:
        for a small LM the head costs more than several blocks. With `base` (the frozen prefix below
        the LoRA layers) the base model's NLL comes too, from the blocks above the prefix only."""
        backbone = self.backbone
        enc = tasks.encode(backbone, inputs, targets).to(backbone.device)
        kwargs, scored, aligned = tasks.narrowed(backbone, enc)
        rows = tasks.rows_of(enc) if aligned else None
        scope = self.routed(enc.key_mask, inputs) if route else no_routes(len(inputs))
        with scope as found, (base.capturing() if base is not None else nullcontext()):
            logits = self.forward(kwargs).logits
        nll, counts, hits = self._nll(logits, scored, aligned, rows, len(inputs))
        base_nll = None
        if base is not None:
            base_nll = self._nll(prefix.replayed(base, lambda: self.forward(kwargs).logits), scored, aligned, rows,
                                 len(inputs))[0]
        return TargetScores(nll, counts, hits, list(found), base_nll)

    def _nll(self, logits, scored, aligned, rows, n) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, hits = self.task.score(logits, scored, aligned, rows)
        if aligned:
            counts = torch.bincount(rows, minlength=n).to(loss.dtype)
            return (loss * counts).cpu(), counts.cpu(), hits.cpu()
        nll, counts = self.task.token_nll(logits, scored)
        return nll.cpu(), counts.cpu(), hits.cpu()

    def frozen_prefix(self) -> FrozenPrefix | None:
        """The blocks below every LoRA layer, replayable (see melo_cli/model/prefix.py), or None."""
        return prefix.frozen_prefix(self.backbone.model, self.config.lora_layers or [])

    @torch.no_grad()
    def route(self, texts: list[str], batch_size: int = 32) -> list[Route]:
        """Where each input would go, without running the model past the key layer."""
        if self.router is None or len(self.router) == 0:
            return [Route(None, None, NO_BLOCK) for _ in texts]
        keys = self.keys(texts, batch_size)
        return self.router.route(keys, texts) if len(texts) else []

    @torch.no_grad()
    def predict(self, inputs: list[str], max_new_tokens: int = 20, route: bool = True,
                decoding: Decoding | None = None) -> list[Prediction]:
        """Text (causal LM, seq2seq; greedy unless `decoding` says otherwise, up to EOS, each routed row
        handed back to the base model once it has given its target) or label (classification) for each
        input (melo_cli/model/predict.py)."""
        return predict(self, inputs, max_new_tokens, route, decoding or Decoding())

    # -- what the edit loop needs (melo_cli/training) ------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor]):
        """One forward pass over encoded inputs, in whatever route scope is open."""
        return self.task.forward(self.backbone.model, inputs)

    def start_blocks(self, first: int, count: int, generator: torch.Generator) -> list[nn.Parameter]:
        """Open blocks first..first+count-1 on every LoRA layer for training; their parameters."""
        return [p for layer in self.layers.values() for p in layer.start_blocks(first, count, generator)]

    def snap_blocks(self) -> None:
        """Keep the blocks being trained on the storage grid (after each optimizer step)."""
        for layer in self.layers.values():
            layer.snap()

    def commit_blocks(self) -> None:
        """Freeze the trained blocks into the pools."""
        for layer in self.layers.values():
            layer.commit_block()

    def with_blocks(self, block_ids: torch.Tensor):
        """A route scope where row i uses block block_ids[i] (NO_BLOCK: none), whatever its key."""
        return self.routes.fixed(block_ids)

    @torch.no_grad()
    def capture_keys(self, inputs: dict[str, torch.Tensor], key_mask: torch.Tensor,
                     frozen: FrozenPrefix) -> tuple[np.ndarray, torch.Tensor]:
        """One no-grad pass of the base model (no block runs): each row's key, pooled at the key layer, and
        the frozen prefix captured for training; (keys, logits)."""
        taken = []

        def on_keys(pooled: torch.Tensor) -> torch.Tensor:
            taken.append(pooled.float().cpu().numpy())
            return torch.full((pooled.shape[0],), NO_BLOCK, dtype=torch.long)

        with self.routes.by_key(key_mask, on_keys), frozen.capturing():
            logits = self.forward(inputs).logits
        if not taken:
            raise RuntimeError(f"the key layer {self.config.key_layer} did not run")
        return taken[0], logits

    @property
    def trainable_per_block(self) -> int:
        """Parameters one block holds over every LoRA layer (what an edit costs with a block per edit)."""
        return sum(layer.rank * (layer.in_features + layer.out_features) for layer in self.layers.values())

    # -- LoRA weights -------------------------------------------------------------------------
    def lora_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, layer in self.layers.items():
            state[f"{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous()
            state[f"{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous()
        return state

    def load_lora_state(self, state: dict) -> None:
        """Take LoRA pools from a bundle (numpy arrays or tensors, by layer name)."""
        for name, layer in self.layers.items():
            a, b = torch.as_tensor(state[f"{name}.lora_A"]), torch.as_tensor(state[f"{name}.lora_B"])
            if a.shape[1:] != layer.lora_A.shape[1:] or b.shape[1:] != layer.lora_B.shape[1:]:
                raise ValueError(f"LoRA tensors of {name} have shape {tuple(a.shape)}, {tuple(b.shape)}; "
                                 f"the model needs (*, {layer.rank}, {layer.in_features}), (*, {layer.out_features}, {layer.rank})")
            layer.lora_A = a.to(layer.lora_A.device, torch.float32)  # float16 to float32: exact
            layer.lora_B = b.to(layer.lora_B.device, torch.float32)


def _stop_with_keys(keys: torch.Tensor) -> torch.Tensor:
    raise _KeysTaken(keys)
