"""A store that writes nothing: ``chatcli ask --no-save``. It reads through another store (to continue a
session with ``-c``), holds no lock, and every save is a no-op that says so in its SaveInfo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatcli.clock import utc_now
from chatcli.errors import SessionNotFound
from chatcli.model import Conversation
from chatcli.search import SearchHit
from chatcli.stores.base import Page, SaveInfo, Store

NOT_SAVED = "(not saved)"


class _NoLock:
    def release(self) -> None:
        pass


class DiscardingStore:
    """Reads from ``source`` (None: there is nothing to read); writes nothing."""

    kind = "none"

    def __init__(self, source: Store | None = None) -> None:
        self.source = source
        self.display = NOT_SAVED

    def lock(self, session_id: str) -> _NoLock:
        return _NoLock()

    def load(self, session_id: str, *, trashed: bool = False) -> Conversation:
        if self.source is None:
            raise SessionNotFound(f"no session {session_id}")
        return self.source.load(session_id, trashed=trashed)

    def save(self, conv: Conversation, *, changed_from: int = 0, checkpoint: bool = False) -> SaveInfo:
        return SaveInfo(location=NOT_SAVED, size=None, saved_at=utc_now())

    def create(self, conv: Conversation, *, trashed: bool = False) -> SaveInfo:
        return self.save(conv)

    def create_many(self, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
        for conv, _ in items:
            self.save(conv)
        return [conv.id for conv, _ in items]

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        return self.source is not None and self.source.exists(session_id, trashed=trashed)

    def location(self, session_id: str, *, trashed: bool = False) -> str:
        return NOT_SAVED

    def stored_size(self, session_id: str) -> int | None:
        return None

    def ids(self) -> list[str]:
        return self.source.ids() if self.source is not None else []

    def trashed_ids(self) -> list[str]:
        return []

    def newest_id(self) -> str | None:
        return self.source.newest_id() if self.source is not None else None

    def ids_titled(self, title: str) -> list[str]:
        return self.source.ids_titled(title) if self.source is not None else []

    def trash(self, session_id: str) -> None:
        pass

    def restore(self, session_id: str) -> None:
        pass

    def purge(self, session_id: str, *, trashed: bool = False) -> None:
        pass

    def page(
        self,
        limit: int | None = None,
        *,
        since: str | None = None,
        before: str | None = None,
        model: str | None = None,
        title: str | None = None,
        trashed: bool = False,
    ) -> Page:
        return Page([])

    def search(
        self,
        text: str,
        *,
        role: str | None = None,
        session_id: str | None = None,
        limit: int = 20,
        reasoning: bool = False,
    ) -> list[SearchHit]:
        return []

    def totals(self, active_since: str) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
