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
from transformers import StoppingCriteriaList

from . import handoff, lengths, prefix, tasks
from .backbones import Backbone
from .config import MeloConfig
from .errors import InputError
from .generation import Decoding, apply_chat, eos_ids
from .keys import SentenceEncoder, hidden_of, pool
from .lora import BlockLoRA
from .placement import execution_device
from .prefix import FrozenPrefix
from .router import Route, Router
from .route_scope import NO_BLOCK, Routes


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


@dataclass
class Prediction:
    """One input's output under the edited model, with the route it took."""

    text: str | None
    label: str | None
    probabilities: dict[str, float] | None
    route: Route


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
        for name in config.lora_layers or ():  # None: the bare base model (workflow.bare_model)
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
    def _fixed_routes(self, routes: list[Route], device) -> Iterator[list[Route]]:
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
                    self._forward(enc.inputs)
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
                return enc, self._forward(enc.inputs).logits, [Route(None, None, NO_BLOCK)] * len(inputs)
            with self.routed(enc.key_mask, inputs) as found:
                logits = self._forward(enc.inputs).logits
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
        scope = self.routed(enc.key_mask, inputs) if route else _no_routes(len(inputs))
        with scope as found, (base.capturing() if base is not None else nullcontext()):
            logits = self._forward(kwargs).logits
        nll, counts, hits = self._nll(logits, scored, aligned, rows, len(inputs))
        base_nll = None
        if base is not None:
            base_nll = self._nll(prefix.replayed(base, lambda: self._forward(kwargs).logits), scored, aligned, rows,
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
        """The blocks below every LoRA layer, replayable (see melo_cli/prefix.py), or None."""
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
        """Text (causal LM, seq2seq; greedy unless `decoding` says otherwise, up to EOS) or label
        (classification) for each input. With `decoding.chat` the model sees each input in the chat
        template and the router sees the input as written."""
        backbone = self.backbone
        decoding = decoding or Decoding()
        prompts = inputs
        if decoding.chat:
            inputs = apply_chat(backbone.tokenizer, prompts, decoding.system)
        enc = _fit_positions(backbone, tasks.encode(backbone, inputs), max_new_tokens).to(backbone.device)
        if not route:
            scope = _no_routes(len(inputs))
        elif decoding.chat:
            scope = self._fixed_routes(self.route(prompts), enc.key_mask.device)
        else:
            scope = self.routed(enc.key_mask, inputs)
        task = self.task
        if not task.generates:
            with scope as found:
                probs = torch.softmax(self._forward(enc.inputs).logits.float(), -1).cpu()
            id2label = backbone.model.config.id2label
            results = []
            for row, route_taken in enumerate(found):
                p = {str(id2label[i]): float(probs[row, i]) for i in range(probs.shape[1])}
                results.append(Prediction(None, str(id2label[int(probs[row].argmax())]), p, route_taken))
            return results
        found, tokens = self._generate(inputs, enc, scope, max_new_tokens, decoding)
        if not found:
            found = [Route(None, None, NO_BLOCK) for _ in inputs]
        return [Prediction(backbone.tokenizer.decode(row, skip_special_tokens=True), None, None, route_taken)
                for row, route_taken in zip(tokens, found)]

    def _generate(self, inputs: list[str], enc: tasks.Encoded, scope, max_new_tokens: int,
                  decoding: Decoding) -> tuple[list[Route], list[list[int]]]:
        """(routes, new tokens per row): generation in the route scope, each routed row handed back to the
        base model once it has given its target (melo_cli/handoff.py) unless `decoding.handoff` is off."""
        backbone, task = self.backbone, self.task
        kwargs = {k: v for k, v in enc.inputs.items() if k != "position_ids"}
        width = kwargs["input_ids"].shape[1]
        start = width if task.prompts_share_positions else 0
        options = dict(**decoding.generate_kwargs(), pad_token_id=backbone.pad_id,
                       eos_token_id=eos_ids(backbone.model, backbone.tokenizer))
        if decoding.seed is not None:
            torch.manual_seed(decoding.seed)
        with scope as found:
            watch = handoff.TargetWatch(backbone.tokenizer, start, lambda: self._taught(inputs, found), options["eos_token_id"],
                                        task.target_ends_with_eos) if decoding.handoff and self.router is not None else None
            extra = {"stopping_criteria": StoppingCriteriaList([watch])} if watch is not None else {}
            generated = backbone.model.generate(**kwargs, max_new_tokens=max_new_tokens, **options, **extra)
        tokens = [row.tolist() for row in task.new_tokens(generated, enc)]
        for row in watch.handed_back() if watch is not None else []:
            tokens[row] = generated[row, start:watch.stopped[row]].tolist()
        rows = [r for r in (watch.handed_back() if watch is not None else []) if len(tokens[r]) < max_new_tokens]
        if rows:
            more = handoff.continue_on_base(backbone, task, enc, generated, watch, rows,
                                            [max_new_tokens - len(tokens[r]) for r in rows], options)
            for row, added in zip(rows, more):
                tokens[row] += added
        return list(found), tokens

    def _taught(self, inputs: list[str], routes: list[Route]) -> list[str | None]:
        """Each routed row's target as its block learned to write it after this input: the label of the
        cluster it was routed to, encoded by the task and decoded (a task may teach it changed);
        None for a row with no block."""
        rows = [i for i, r in enumerate(routes) if r.routed]
        out: list[str | None] = [None] * len(routes)
        if not rows:
            return out
        labels = [self.router.labels[routes[i].cluster] for i in rows]
        targets = tasks.encode(self.backbone, [inputs[i] for i in rows], labels).targets
        for i, row in zip(rows, targets.tolist()):
            out[i] = self.backbone.tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True)
        return out

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


def _fit_positions(backbone: Backbone, enc: tasks.Encoded, max_new_tokens: int) -> tasks.Encoded:
    """Left-padded causal prompts cut from the left so that prompt + new tokens fit the model's
    positions (GPT-2 has 1,024 and fails past them); said once per call on stderr."""
    limit = lengths.max_positions(backbone)
    width = enc.inputs["input_ids"].shape[1] if "input_ids" in enc.inputs else 0
    if not tasks.task_of(backbone).prompts_share_positions or not limit or width + max_new_tokens <= limit:
        return enc
    if max_new_tokens > limit // 2:  # generating would crowd the prompt out (100,000 tokens kept 1 and ran on)
        raise InputError(f"`max_new_tokens` {max_new_tokens}: the model reads at most {limit:,} positions, which "
                         f"must hold the prompt too; ask for at most {limit // 2:,}")
    keep = max(limit - max_new_tokens, 1)
    log.warning("prompt of %d tokens cut to its last %d: the model reads at most %d positions, %d of them "
                "for new tokens", width, keep, limit, max_new_tokens)
    mask = enc.inputs["attention_mask"][:, -keep:]
    inputs = {"input_ids": enc.inputs["input_ids"][:, -keep:], "attention_mask": mask,
              "position_ids": tasks.positions(mask)}
    return tasks.Encoded(inputs, enc.key_mask[:, -keep:])


def _stop_with_keys(keys: torch.Tensor) -> torch.Tensor:
    raise _KeysTaken(keys)


@contextmanager
def _no_routes(n: int) -> Iterator[list[Route]]:
    yield [Route(None, None, NO_BLOCK) for _ in range(n)]
