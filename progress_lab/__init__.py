"""progress_lab: the Progress Context's event store and vectorized read-model projections."""

from .errors import (
    CheckpointError,
    ConcurrencyError,
    ConsistencyError,
    EventStoreError,
    EventValidationError,
    MissingExtraError,
    ProgressRepositoryError,
    ProjectionError,
    SerializationError,
    StoreUnavailableError,
)
from .events import (
    KNOWN_EVENT_TYPES,
    CorrectAnswerGiven,
    EventMetadata,
    PersistedEvent,
    ReviewProcessed,
    SessionCompleted,
    SessionStarted,
    Snapshot,
    UserCreated,
)
from .store import EventStore, NewRecord, SnapshotPolicy, connect

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConcurrencyError",
    "ConsistencyError",
    "CorrectAnswerGiven",
    "EventMetadata",
    "EventStore",
    "EventStoreError",
    "EventValidationError",
    "KNOWN_EVENT_TYPES",
    "MissingExtraError",
    "NewRecord",
    "PersistedEvent",
    "ProgressRepositoryError",
    "ProjectionError",
    "ReviewProcessed",
    "SerializationError",
    "SessionCompleted",
    "SessionStarted",
    "Snapshot",
    "SnapshotPolicy",
    "StoreUnavailableError",
    "UserCreated",
    "connect",
]
