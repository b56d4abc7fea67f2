"""UTC timestamps as chatcli writes them: ISO 8601 with milliseconds and a ``Z``, e.g.
``2026-11-25T09:19:10.123Z``. Such strings sort in time order, so stores compare them as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso(when: datetime) -> str:
    """``when`` (aware, or naive meaning UTC) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    """The current time, e.g. ``2026-11-25T09:19:10.123Z``."""
    return iso(datetime.now(UTC))


def utc_ago(age: timedelta) -> str:
    """The time ``age`` ago, in the same form (``utc_ago(timedelta(days=7))`` for "a week ago")."""
    return iso(datetime.now(UTC) - age)
