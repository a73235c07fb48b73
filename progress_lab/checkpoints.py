"""Projection checkpoints: how far each projection has folded the log; they only move forward."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import polars as pl
import sqlalchemy as sa

from ._schema import projection_checkpoints as _checkpoints
from .errors import CheckpointError

__all__ = ["Checkpoint", "CheckpointStore"]


@dataclass(frozen=True)
class Checkpoint:
    """A projection's position in the log and what it has counted so far."""

    name: str
    position: int = 0
    events_folded: int = 0
    ignored: int = 0
    options: dict[str, object] | None = None
    updated_at: datetime | None = None


class CheckpointStore:
    """Reads and advances checkpoints, inside the caller's transaction where one is given."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get(self, name: str, conn: sa.Connection | None = None) -> Checkpoint:
        """The checkpoint of ``name`` (position 0 when it has never run)."""
        query = sa.select(_checkpoints).where(_checkpoints.c.name == name)
        if conn is None:
            with self.engine.connect() as own:
                row = own.execute(query).first()
        else:
            row = conn.execute(query).first()
        if row is None:
            return Checkpoint(name)
        return Checkpoint(
            name=row.name,
            position=row.position,
            events_folded=row.events_folded,
            ignored=row.ignored,
            options=json.loads(row.options) or None,
            updated_at=row.updated_at,
        )

    def advance(
        self,
        conn: sa.Connection,
        name: str,
        *,
        expected: int,
        position: int,
        events_folded: int,
        ignored: int,
        options: dict[str, object],
        now: datetime,
    ) -> None:
        """Move ``name`` from ``expected`` to ``position`` inside ``conn``'s transaction.

        Raises
        ------
        CheckpointError
            When ``position`` is behind ``expected``, or the stored checkpoint is no
            longer at ``expected`` (another projector moved it): the caller's transaction
            must then roll back, so nothing is counted twice.
        """
        if position < expected:
            raise CheckpointError(f"checkpoint {name!r} cannot move back from {expected} to {position}")
        values = {
            "position": position,
            "events_folded": events_folded,
            "ignored": ignored,
            "options": json.dumps(options, sort_keys=True),
            "updated_at": now,
        }
        if expected == 0:
            exists = conn.execute(sa.select(_checkpoints.c.position).where(_checkpoints.c.name == name)).first()
            if exists is None:
                try:
                    conn.execute(_checkpoints.insert().values(name=name, **values))
                except sa.exc.IntegrityError:  # PostgreSQL: another projector inserted it first
                    raise CheckpointError(
                        f"checkpoint {name!r} was created by another projector meanwhile"
                    ) from None
                return
        result = conn.execute(
            _checkpoints.update()
            .where(_checkpoints.c.name == name, _checkpoints.c.position == expected)
            .values(**values)
        )
        if result.rowcount != 1:
            found = self.get(name, conn).position
            raise CheckpointError(
                f"checkpoint {name!r} is at {found}, not {expected}: another projector moved it"
            )

    def reset(self, conn: sa.Connection, name: str) -> None:
        """Forget a checkpoint (inside the caller's transaction), for a rebuild."""
        conn.execute(_checkpoints.delete().where(_checkpoints.c.name == name))

    def all(self) -> pl.DataFrame:
        """Every checkpoint: name, position, events folded, ignored, last update."""
        query = sa.select(
            _checkpoints.c.name,
            _checkpoints.c.position,
            _checkpoints.c.events_folded,
            _checkpoints.c.ignored,
            _checkpoints.c.updated_at,
        ).order_by(_checkpoints.c.name)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        return pl.DataFrame(
            rows,
            schema={
                "name": pl.String,
                "position": pl.Int64,
                "events_folded": pl.Int64,
                "ignored": pl.Int64,
                "updated_at": pl.Datetime("us", "UTC"),
            },
            orient="row",
        )
