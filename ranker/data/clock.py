"""Time, in one place. All timestamps are naive UTC.

The synthetic world and imported data sets live in their own time: the setting
``clock`` holds the moment serving treats as "now" (the end of the demo history,
advanced by the simulator). Without it, serving uses the wall clock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from ranker import keys


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def serve_now(session: Session) -> datetime:
    from ranker.data.db import get_setting

    value = get_setting(session, keys.CLOCK)
    return datetime.fromisoformat(value) if value else utcnow()


def set_clock(session: Session, moment: datetime) -> None:
    from ranker.data.db import put_setting

    put_setting(session, keys.CLOCK, moment.isoformat())
