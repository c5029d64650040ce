"""Per-call routing state: which LoRA block each row of the current forward uses.

The edited model owns one `Routes` object and hands it to every BlockLoRA layer it attaches.
A call opens a scope (`fixed` for training, `by_key` for inference); inside it the layers read the
per-row block ids. The state is thread-local, so two threads (or two models, which own two
objects) never see each other's routes. Outside a scope the layers add nothing: the base model.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from melo_cli.router.vocabulary import NO_BLOCK


@dataclass
class RouteScope:
    """The routing of one call: block ids per row, or how to decide them from the key layer."""

    block_ids: torch.Tensor | None = None
    """(batch,) long, NO_BLOCK for rows that run the base model; None until decided."""
    key_mask: torch.Tensor | None = None
    """(batch, seq) mask of the positions that make each row's key (by_key scopes)."""
    on_keys: Callable[[torch.Tensor], torch.Tensor] | None = None
    """pooled keys (batch, dim) -> block ids; called once, by the key-layer hook."""
    cache: dict = field(default_factory=dict)
    """Per-call values derived from block_ids (routed rows, gathered LoRA weights), computed once:
    under `generate` every decoding step reuses them."""

    def routed_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions of the rows that have a block, their block ids), computed once per call."""
        if "rows" not in self.cache:
            rows = torch.nonzero(self.block_ids != NO_BLOCK).flatten()
            self.cache["rows"] = (rows, self.block_ids[rows])
        return self.cache["rows"]


class Routes:
    """The routing state one edited model shares with its layers."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def scope(self) -> RouteScope | None:
        return getattr(self._local, "scope", None)

    def active(self) -> RouteScope | None:
        """The open scope once its routes are decided, else None."""
        scope = self.scope
        return scope if scope is not None and scope.block_ids is not None else None

    @contextmanager
    def _open(self, scope: RouteScope) -> Iterator[RouteScope]:
        if self.scope is not None:
            raise RuntimeError("a routing scope is already open on this thread")
        self._local.scope = scope
        try:
            yield scope
        finally:
            self._local.scope = None

    def fixed(self, block_ids: torch.Tensor) -> "contextmanager[RouteScope]":
        """Route each row to a given block (training, or a forced route)."""
        return self._open(RouteScope(block_ids=block_ids))

    def by_key(self, key_mask: torch.Tensor,
               on_keys: Callable[[torch.Tensor], torch.Tensor]) -> "contextmanager[RouteScope]":
        """Let the key-layer hook decide each row's block from its key, once per scope.

        Under `generate` the first forward sees the prompt and decides; the cached decoding
        steps that follow keep that decision.
        """
        return self._open(RouteScope(key_mask=key_mask, on_keys=on_keys))
