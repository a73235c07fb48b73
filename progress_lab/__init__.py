"""progress_lab: the Progress Context's event store and vectorized read-model projections."""

from . import generator
from .checkpoints import Checkpoint, CheckpointStore
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
from .jsonl import export_jsonl, import_jsonl, record_from_dict
from .monitor import LagReport, LagStatus, ProjectionMonitor
from .projections import FoldOptions, ProjectionState, fold
from .projector import ProjectionManager, RunReport
from .read_models import (
    DAILY_STATS_SCHEMA,
    USER_PROGRESS_SCHEMA,
    DailyStatsRepository,
    UserProgressRepository,
)
from .reference import ReferenceFold
from .store import EventStore, NewRecord, SnapshotPolicy, connect

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "DAILY_STATS_SCHEMA",
    "DailyStatsRepository",
    "FoldOptions",
    "LagReport",
    "LagStatus",
    "ProjectionManager",
    "ProjectionMonitor",
    "ProjectionState",
    "ReferenceFold",
    "RunReport",
    "USER_PROGRESS_SCHEMA",
    "UserProgressRepository",
    "fold",
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
    "export_jsonl",
    "generator",
    "import_jsonl",
    "record_from_dict",
]
