"""The stores one server serves, by name: each has its own index (hot-reloaded) and, when the
server learns, its own overlay. A request names its store; the empty name means the default."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from datastore_service.errors import CrestError
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.overlay.overlay import Overlay, OverlaySettings
from datastore_service.rest.index import RestIndex
from datastore_service.serve.index_holder import IndexHolder

log = logging.getLogger("crest.serve")
DEFAULT_NAME = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class StoreSpec:
    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> StoreSpec:
        """`NAME=PATH`, as `crest serve --store` takes it."""
        name, sep, path = text.partition("=")
        if not sep or not path:
            raise CrestError(f"--store takes NAME=PATH, got {text!r}")
        if not _NAME.match(name):
            raise CrestError(f"store name {name!r}: use letters, digits, '_', '.' or '-' (at most 64)")
        return cls(name, Path(path).expanduser())


class ServedStore:
    def __init__(
        self, spec: StoreSpec, learn: OverlaySettings | None, rest_overrides: Mapping[str, int] | None = None
    ) -> None:
        self.name, self.path = spec.name, spec.path
        self.holder = IndexHolder(spec.path, rest_overrides)
        self.overlay: Overlay | None = None
        if learn is not None:
            if not isinstance(self.holder.index, DraftIndex):
                log.warning("store %s is a REST baseline store: it does not learn", self.name)
            else:
                self.overlay = Overlay(spec.path, self.holder.index, learn).start()

    def reload_if_published(self) -> bool:
        if not self.holder.reload_if_published():
            return False
        if self.overlay is not None:
            self.overlay.rebase(self.holder.index)
        return True

    def stop(self) -> None:
        if self.overlay is not None:
            self.overlay.stop()


class StoreSet:
    def __init__(
        self,
        specs: list[StoreSpec],
        learn: OverlaySettings | None = None,
        rest_overrides: Mapping[str, int] | None = None,
    ) -> None:
        """`rest_overrides`: k/n/m/c for every REST store served (CREST stores have none)."""
        names = [spec.name for spec in specs]
        if not specs:
            raise CrestError("no store to serve")
        if len(set(names)) != len(names):
            raise CrestError(f"two stores share a name: {', '.join(sorted(n for n in names if names.count(n) > 1))}")
        self.stores = {spec.name: ServedStore(spec, learn, rest_overrides) for spec in specs}
        if rest_overrides and not any(isinstance(store.holder.index, RestIndex) for store in self):
            raise CrestError("REST's k/n/m/c settings (--rest-*) apply to REST stores, and none is served")
        self.default = DEFAULT_NAME if DEFAULT_NAME in self.stores else None

    def resolve(self, name: str) -> str:
        return name or self.default or ""

    def get(self, name: str) -> ServedStore:
        """The store a request names (KeyError: none by that name)."""
        return self.stores[self.resolve(name)]

    def __iter__(self):
        return iter(self.stores.values())

    def reload_if_published(self) -> None:
        for store in self:
            store.reload_if_published()

    def stop(self) -> None:
        for store in self:
            store.stop()
