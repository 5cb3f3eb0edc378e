"""Create or update one catalogue item or one user, as a client application does.

The values are checked by the caller's schema (the HTTP API's pydantic models); here
they are written in one short transaction. Times default to the serve clock's now, so
a new item is brand new to recency however the world's clock is set. Serving notices
the change on its next catalogue check (every few seconds); the base models learn new
items and users on their next fit (``ranker base fit``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ranker.data.clock import serve_now
from ranker.data.db import session_scope, with_retries
from ranker.data.schema import Item, User


def upsert_item(engine: Engine, item_id: int, *, item_type: str, category: str, field: str, type: str,
                name: str | None = None, created_at: datetime | None = None,
                updated_at: datetime | None = None) -> tuple[dict[str, Any], bool]:
    """Write item ``item_id``; returns its row and whether it is new.

    Raises
    ------
    ValueError
        ``updated_at`` before the item's ``created_at``.
    """

    def write() -> tuple[dict[str, Any], bool]:
        with session_scope(engine) as s:
            now = serve_now(s)
            row = s.get(Item, item_id)
            created = row is None
            if created:
                row = Item(id=item_id, views=0, name=name or f"item-{item_id}", created_at=created_at or now)
                s.add(row)
            else:
                row.name = name or row.name
                row.created_at = created_at or row.created_at
            row.item_type, row.category, row.field, row.type = item_type, category, field, type
            row.updated_at = updated_at or max(now, row.created_at)
            if row.updated_at < row.created_at:
                raise ValueError(f"updated_at {row.updated_at.isoformat()} is before the item's created_at "
                                 f"{row.created_at.isoformat()}")
            s.flush()
            if created:
                _advance_sequence(s, "items")
            return _item_dict(row), created

    return _with_conflict_retry(write)


def upsert_user(engine: Engine, user_id: int, *, role: str, name: str | None = None,
                category: str | None = None, field: str | None = None,
                created_at: datetime | None = None) -> tuple[dict[str, Any], bool]:
    """Write user ``user_id``; returns its row and whether it is new."""

    def write() -> tuple[dict[str, Any], bool]:
        with session_scope(engine) as s:
            row = s.get(User, user_id)
            created = row is None
            if created:
                row = User(id=user_id, name=name or f"user-{user_id}", created_at=created_at or serve_now(s))
                s.add(row)
            else:
                row.name = name or row.name
                row.created_at = created_at or row.created_at
            row.role, row.category, row.field = role, category, field
            s.flush()
            if created:
                _advance_sequence(s, "users")
            return {"id": row.id, "role": row.role, "name": row.name, "category": row.category,
                    "field": row.field, "created_at": row.created_at.isoformat()}, created

    return _with_conflict_retry(write)


def _with_conflict_retry(write):
    """Run ``write``; when a concurrent request created the same id first, run it again (as an update)."""
    try:
        return with_retries(write)
    except IntegrityError:
        return with_retries(write)


def _advance_sequence(s: Session, table: str) -> None:
    """PostgreSQL: move the id sequence past an id given explicitly, so later inserts do not collide."""
    if s.get_bind().dialect.name != "postgresql":
        return
    s.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                   f"GREATEST((SELECT MAX(id) FROM {table}), 1))"))


def _item_dict(row: Item) -> dict[str, Any]:
    return {"id": row.id, "item_type": row.item_type, "name": row.name, "category": row.category,
            "field": row.field, "type": row.type, "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat()}
