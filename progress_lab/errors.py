"""The exceptions of progress_lab: one hierarchy rooted in ProgressRepositoryError."""

from __future__ import annotations

__all__ = [
    "ProgressRepositoryError",
    "EventStoreError",
    "ConcurrencyError",
    "EventValidationError",
    "SerializationError",
    "ProjectionError",
    "CheckpointError",
    "ConsistencyError",
    "StoreUnavailableError",
    "MissingExtraError",
]


class ProgressRepositoryError(Exception):
    """Raised for any failure of progress_lab's repositories; the root of the hierarchy."""


class EventStoreError(ProgressRepositoryError):
    """Raised when the event store cannot carry out an operation."""


class ConcurrencyError(EventStoreError):
    """Raised when a stream is not at the version the writer expected."""

    def __init__(self, stream_id: str, expected_version: int, actual_version: int) -> None:
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"stream {stream_id!r} is at version {actual_version}, "
            f"but version {expected_version} was expected"
        )


class SerializationError(ProgressRepositoryError, ValueError):
    """Raised when an event, a snapshot or a state cannot be encoded or decoded."""


class EventValidationError(SerializationError):
    """Raised when an event or its metadata breaks the schema of its type; nothing is written.

    ``errors`` lists ``(location, message)`` pairs, e.g. ``("event_data.item_count",
    "Input should be greater than or equal to 0")``; ``index`` is the position of the
    offending event in the batch and ``line`` its line number in an imported file.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: list[tuple[str, str]] | None = None,
        index: int | None = None,
        line: int | None = None,
    ) -> None:
        self.errors = errors or []
        self.index = index
        self.line = line
        super().__init__(message)


class ProjectionError(ProgressRepositoryError):
    """Raised when a projection cannot fold events or write its read models."""


class CheckpointError(ProjectionError):
    """Raised when a projection checkpoint would move backwards or cannot be stored."""


class ConsistencyError(ProgressRepositoryError):
    """Raised when stored data contradicts itself (a read model ahead of its log, a bad snapshot)."""


class StoreUnavailableError(EventStoreError, ConnectionError, TimeoutError):
    """Raised when the database cannot be reached or stays locked past the retry budget."""


class MissingExtraError(ProgressRepositoryError, ImportError):
    """Raised when an optional dependency is needed; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is required for this feature: pip install 'progress_lab[{extra}]'"
        )
