"""The inner vector database: the routing vocabulary (vocabulary), the Router with its public mutators
(router), its radius policies (policies), what an edit routes on besides its key (entities; subjects for
bundles of format 1; member_entities, the table the gate reads), and the growing arrays it keeps
(growing). Imports neither model/ nor bundle/, and no torch."""

from melo_cli.router.router import Router
from melo_cli.router.vocabulary import NEGATIVE, NO_BLOCK, RETIRED, AddResult, Route, auto_radius, distance

__all__ = ["NEGATIVE", "NO_BLOCK", "RETIRED", "AddResult", "Route", "Router", "auto_radius", "distance"]
