"""The folds against each other and against the spec.

Property tests (hypothesis, over the adversarial raw logs of ``strategies.py``):

1. the per-event reference fold and the vectorized polars fold give the same read models;
2. incremental = full: any split of the log into batches gives the one-batch result;
3. snapshot + tail = full;
4. the reference fold is split-invariant too.

Example tests pin numbers worked out by hand from the spec (not by running the code),
and a non-vacuity test makes sure the drawn logs really reach the edge cases.

``PROGRESS_LAB_SOAK=1`` raises the number of examples per property to 2000.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any
from unittest.mock import patch

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

# conftest.py puts this folder on sys.path.
from strategies import (
    CORRUPTIONS,
    SCENARIOS,
    Log,
    RawRow,
    correct_answer,
    cut_points,
    logs_and_options,
    review,
    row,
    session_completed,
    session_started,
    split,
    ts,
    user_created,
)

from progress_lab import projections  # noqa: E402
from progress_lab.events import KNOWN_EVENT_TYPES  # noqa: E402
from progress_lab.frames import FOLD_SCHEMA, check_raw_event, frame_from_raw  # noqa: E402
from progress_lab.projections import FoldOptions, ProjectionState, fold  # noqa: E402
from progress_lab.read_models import DAILY_STATS_SCHEMA, REJECTIONS_SCHEMA, USER_PROGRESS_SCHEMA  # noqa: E402
from progress_lab.reference import ReferenceFold  # noqa: E402

# -- hypothesis settings ------------------------------------------------------------------------

SOAK = os.environ.get("PROGRESS_LAB_SOAK", "").strip().lower() in {"1", "true", "yes", "on"}

settings.register_profile(
    "progress_lab_folds",
    # This machine is slow (2 cores, ~50 ms per vectorized fold of a small batch): the
    # counts below keep the module well under a minute; PROGRESS_LAB_SOAK=1 runs 2000 each.
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,  # nothing written to .hypothesis/
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("progress_lab_folds_soak", settings.get_profile("progress_lab_folds"), max_examples=2000)
PROFILE = settings.get_profile("progress_lab_folds_soak" if SOAK else "progress_lab_folds")
# Properties that fold every example several times (one batch per cut, or prefix + tail).
MULTI_FOLD = settings(PROFILE, max_examples=2000 if SOAK else 40)
# The reference fold alone is cheap: it gets more examples.
CHEAP = settings(PROFILE, max_examples=2000 if SOAK else 200)


# -- helpers ------------------------------------------------------------------------------------

Folded = ReferenceFold | ProjectionState


def vectorized(rows: list[RawRow], options: FoldOptions) -> ProjectionState:
    return fold(frame_from_raw(rows), options=options)


def read_all(folded: Folded, as_of: date | None) -> dict[str, Any]:
    """Everything a fold exposes, keyed by what it is."""
    return {
        "user_progress()": folded.user_progress(),
        f"user_progress(as_of={as_of})": folded.user_progress(as_of),
        "daily_stats()": folded.daily_stats(),
        "rejections()": folded.rejections(),
        "counters": {
            "events_folded": folded.events_folded,
            "ignored": folded.ignored,
            "position": folded.position,
            "default_as_of": folded.default_as_of(),
        },
    }


def assert_same(expected: Folded, actual: Folded, as_of: date | None = None) -> None:
    """Read models and counters equal to the last digit (no float tolerance)."""
    want, got = read_all(expected, as_of), read_all(actual, as_of)
    for name in want:
        if name == "counters":
            assert got[name] == want[name], f"counters differ: expected {want[name]}, got {got[name]}"
        else:
            try:
                assert_frame_equal(got[name], want[name], check_exact=True)
            except AssertionError as exc:
                raise AssertionError(f"{name} differs:\n{exc}\nexpected:\n{want[name]}\ngot:\n{got[name]}") from None


def assert_identical_states(expected: ProjectionState, actual: ProjectionState) -> None:
    """The same state, frame by frame (cheaper than comparing the read models).

    Row order inside a state frame means nothing (snapshots store them sorted), so the
    frames are compared sorted by their keys.
    """
    from progress_lab.projections import _SORT_KEYS

    for name in ("options", "position", "events_folded", "ignored", "latest"):
        assert getattr(actual, name) == getattr(expected, name), name
    for name, keys in _SORT_KEYS.items():
        try:
            assert_frame_equal(
                getattr(actual, name).sort(keys), getattr(expected, name).sort(keys), check_exact=True
            )
        except AssertionError as exc:
            raise AssertionError(f"state frame {name!r} differs after the snapshot round trip:\n{exc}") from None


def assert_no_email(frames: list[pl.DataFrame]) -> None:
    for frame in frames:
        assert not any("mail" in c for c in frame.columns)
        for name, dtype in frame.schema.items():
            if dtype == pl.String:
                cells = frame[name].drop_nulls()
                assert not cells.str.contains("@", literal=True).any(), f"an e-mail address in column {name}"


@st.composite
def logs_options_cuts(draw: st.DrawFn) -> tuple[Log, FoldOptions, list[int]]:
    log, options = draw(logs_and_options())
    return log, options, draw(cut_points(len(log.rows)))


# -- 1. reference == vectorized -----------------------------------------------------------------


@PROFILE
@given(logs_and_options(), st.integers(-4, 8))
def test_reference_fold_equals_vectorized_fold(drawn: tuple[Log, FoldOptions], as_of_offset: int) -> None:
    log, options = drawn
    reference = ReferenceFold(options).fold(log.rows)
    state = vectorized(log.rows, options)
    assert_same(reference, state, log.base + timedelta(days=as_of_offset))
    # Decoding only what the fold reads gives the fold the same frame.
    assert_frame_equal(frame_from_raw(log.rows, columns="fold"), frame_from_raw(log.rows).select(list(FOLD_SCHEMA)))

    # Every corrupt row of a known type is rejected as malformed (by both, as they are equal).
    reasons = {p: r for p, _, r in reference.rejections().iter_rows()}
    for position, kind in log.malformed.items():
        assert reasons.get(position) == "malformed", f"corrupt row ({kind}) at {position}: {reasons.get(position)}"
    assert_no_email([state.user_progress(), state.daily_stats(), state.rejections()])


# -- 2. incremental == full ---------------------------------------------------------------------


@MULTI_FOLD
@given(logs_options_cuts(), st.integers(-2, 6))
def test_incremental_fold_equals_full_fold(drawn: tuple[Log, FoldOptions, list[int]], as_of_offset: int) -> None:
    log, options, cuts = drawn
    full = vectorized(log.rows, options)
    state: ProjectionState | None = None
    # Compacting the state's text buffers after every batch (normally every million
    # events) must change nothing.
    with patch.object(projections, "COMPACT_EVERY", 1):
        for part in split(log.rows, cuts):
            state = fold(frame_from_raw(part), state, options=options)
    assert state is not None
    assert state.compacted_at == state.events_folded
    assert_same(full, state, log.base + timedelta(days=as_of_offset))


# -- 3. snapshot + tail == full -----------------------------------------------------------------


@MULTI_FOLD
@given(logs_and_options(), st.data())
def test_snapshot_plus_tail_equals_full_fold(drawn: tuple[Log, FoldOptions], data: st.DataObject) -> None:
    log, options = drawn
    cut = data.draw(st.integers(0, len(log.rows)), label="cut")
    full = vectorized(log.rows, options)
    prefix = fold(frame_from_raw(log.rows[:cut]), options=options)
    restored = ProjectionState.from_bytes(prefix.to_bytes(), options=options)
    assert_identical_states(prefix, restored)
    state = fold(frame_from_raw(log.rows[cut:]), restored, options=options)
    assert_same(full, state, log.base + timedelta(days=data.draw(st.integers(-2, 6), label="as_of offset")))


# -- 4. the reference fold is split-invariant ---------------------------------------------------


@CHEAP
@given(logs_options_cuts(), st.integers(-2, 6))
def test_reference_fold_is_split_invariant(drawn: tuple[Log, FoldOptions, list[int]], as_of_offset: int) -> None:
    log, options, cuts = drawn
    whole = ReferenceFold(options).fold(log.rows)
    batched = ReferenceFold(options)
    for part in split(log.rows, cuts):
        batched.fold(part)
    assert_same(whole, batched, log.base + timedelta(days=as_of_offset))


# -- non-vacuity: the drawn logs reach the edge cases -------------------------------------------


def test_drawn_logs_reach_the_edge_cases() -> None:
    seen: Counter[str] = Counter()

    @settings(CHEAP, max_examples=200, phases=[Phase.generate])
    @given(logs_and_options())
    def collect(drawn: tuple[Log, FoldOptions]) -> None:
        log, options = drawn
        # The strategy's own claims: corrupt rows fail the check, the other known rows pass it.
        for position, event_type, data, meta in log.rows:
            if event_type in KNOWN_EVENT_TYPES:
                problem = check_raw_event(event_type, data, meta)
                assert (problem is not None) == (position in log.malformed), (position, event_type, data, meta, problem)
        reference = ReferenceFold(options).fold(log.rows)
        progress, daily = reference.user_progress(), reference.daily_stats()
        seen.update(f"reason:{r}" for r in reference.rejections()["reason"].unique().to_list())
        seen.update(f"corruption:{k}" for k in set(log.malformed.values()))
        seen.update(f"scenario:{s}" for s in log.scenarios)
        seen["streak>1"] += int((progress["current_streak"] > 1).any())
        seen["accuracy"] += int(progress["accuracy_rate"].is_not_null().any())
        seen["accuracy>1"] += int((daily["accuracy_rate"] > 1).any())
        seen["new_mastery"] += int(daily["new_mastery_count"].sum() > 0)
        seen["items_learned"] += int(daily["items_learned"].sum() > 0)
        seen["ignored"] += int(reference.ignored > 0)
        seen["position_holes"] += int(bool(log.rows) and log.rows[-1][0] > len(log.rows))
        seen["several_study_days"] += int(daily.filter(pl.col("sessions_completed") > 0).height > 1)
        seen[f"options:{options.timezone}:{options.day_start_hour}"] += 1

    collect()
    wanted = [
        *(f"reason:{r}" for r in ("malformed", "unknown_user", "duplicate_start", "duplicate_completion", "answer_after_completion")),
        *(f"corruption:{k}" for k in CORRUPTIONS),
        *(f"scenario:{s}" for s in SCENARIOS),
        "streak>1",
        "accuracy",
        "accuracy>1",
        "new_mastery",
        "items_learned",
        "ignored",
        "position_holes",
        "several_study_days",
    ]
    missing = [w for w in wanted if seen[w] == 0]
    assert not missing, f"never drawn in 200 logs: {missing}\nseen: {dict(seen)}"
    assert sum(1 for k in seen if k.startswith("options:")) >= 8, dict(seen)


# -- examples worked out by hand from the spec ---------------------------------------------------


def both(rows: list[RawRow], options: FoldOptions | None = None) -> tuple[ReferenceFold, ProjectionState]:
    """Fold with both folds, check they agree, and return them."""
    options = options or FoldOptions()
    reference = ReferenceFold(options).fold(rows)
    state = vectorized(rows, options)
    assert_same(reference, state)
    return reference, state


def progress_row(user_id: str, last_updated: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {name: 0 for name in USER_PROGRESS_SCHEMA}
    base.update(user_id=user_id, accuracy_rate=None, last_updated=datetime.fromisoformat(last_updated).replace(tzinfo=UTC))
    base.update(values)
    return base


def daily_row(user_id: str, day: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {name: 0 for name in DAILY_STATS_SCHEMA}
    base.update(user_id=user_id, date=date.fromisoformat(day), accuracy_rate=None)
    base.update(values)
    return base


def assert_models(folded: Folded, progress: list[dict[str, Any]] | None, daily: list[dict[str, Any]] | None,
                  rejected: list[tuple[int, str, str]] | None = None, as_of: date | None = None) -> None:
    if progress is not None:
        want = pl.DataFrame(progress, schema=USER_PROGRESS_SCHEMA)
        assert_frame_equal(folded.user_progress(as_of), want, check_exact=True)
    if daily is not None:
        assert_frame_equal(folded.daily_stats(), pl.DataFrame(daily, schema=DAILY_STATS_SCHEMA), check_exact=True)
    if rejected is not None:
        want_rej = pl.DataFrame(rejected, schema=REJECTIONS_SCHEMA, orient="row")
        assert_frame_equal(folded.rejections(), want_rej, check_exact=True)


def test_accuracy_counts_distinct_correct_items() -> None:
    # item_count 4, correct answers for a, a, b: 2 distinct items of 4 -> 0.5.
    rows = [
        user_created(1, "u1", ts("2026-03-10T09:00")),
        session_started(2, "s1", "u1", 4, ts("2026-03-10T09:01")),
        correct_answer(3, "s1", "a", ts("2026-03-10T09:02"), "u1"),
        correct_answer(4, "s1", "a", ts("2026-03-10T09:03"), None),
        correct_answer(5, "s1", "b", ts("2026-03-10T09:04"), "u1"),
        session_completed(6, "s1", 125, ts("2026-03-10T09:05"), None),
    ]
    for folded in both(rows):
        assert_models(
            folded,
            [progress_row("u1", "2026-03-10T09:05", total_sessions_completed=1, total_study_time_minutes=2,
                          current_streak=1, accuracy_rate=0.5, unlearned=2)],
            [daily_row("u1", "2026-03-10", sessions_completed=1, study_time_minutes=2, accuracy_rate=0.5)],
            [],
        )


def test_accuracy_can_exceed_one_and_item_count_zero_is_null() -> None:
    rows = [
        session_started(1, "s1", "u1", 1, ts("2026-03-10T09:00")),
        *(correct_answer(2 + i, "s1", item, ts("2026-03-10T09:01"), None) for i, item in enumerate("abc")),
        session_completed(5, "s1", 30, ts("2026-03-10T09:02"), None),  # 3 of 1: 3.0
        session_started(6, "s2", "u1", 0, ts("2026-03-11T09:00")),
        correct_answer(7, "s2", "a", ts("2026-03-11T09:01"), None),
        session_completed(8, "s2", 30, ts("2026-03-11T09:02"), None),  # 1 of 0: no accuracy that day
    ]
    for folded in both(rows):
        assert_models(
            folded,
            # all time: (3 + 1) / (1 + 0) = 4.0; 60 s -> 1 minute; streak of 2 ending on as_of
            [progress_row("u1", "2026-03-11T09:02", total_sessions_completed=2, total_study_time_minutes=1,
                          current_streak=2, accuracy_rate=4.0, unlearned=3)],
            [
                daily_row("u1", "2026-03-10", sessions_completed=1, accuracy_rate=3.0),
                daily_row("u1", "2026-03-11", sessions_completed=1),
            ],
        )


def test_study_time_sums_seconds_before_flooring() -> None:
    # Day 1: 90 + 90 s = 3 min (not 1 + 1); days 2 and 3: 90 s = 1 min each;
    # all time: floor(360 / 60) = 6 (not 3 + 1 + 1 = 5, nor 4 x 1 = 4).
    rows = []
    for i, (session, stamp) in enumerate(
        [("s1", "2026-03-01T08:00"), ("s2", "2026-03-01T20:00"), ("s3", "2026-03-02T08:00"), ("s4", "2026-03-03T08:00")]
    ):
        rows.append(session_started(2 * i + 1, session, "u1", 0, ts(stamp)))
        rows.append(session_completed(2 * i + 2, session, 90, ts(stamp[:-2] + "30"), "u1"))
    for folded in both(rows):
        assert_models(
            folded,
            [progress_row("u1", "2026-03-03T08:30", total_sessions_completed=4, total_study_time_minutes=6,
                          current_streak=3)],
            [
                daily_row("u1", "2026-03-01", sessions_completed=2, study_time_minutes=3),
                daily_row("u1", "2026-03-02", sessions_completed=1, study_time_minutes=1),
                daily_row("u1", "2026-03-03", sessions_completed=1, study_time_minutes=1),
            ],
        )


def _completed_on(position: int, session: str, user: str, day: str) -> list[RawRow]:
    return [
        session_started(position, session, user, 1, ts(f"{day}T12:00")),
        session_completed(position + 1, session, 60, ts(f"{day}T12:10"), user),
    ]


@pytest.mark.parametrize(
    ("as_of", "streak"),
    [
        (None, 3),  # default: the study day of the latest event (u2's session on 03-10)
        ("2026-03-10", 3),  # 03-10 has no session yet: the run ending 03-09 (09, 08, 07)
        ("2026-03-09", 3),
        ("2026-03-08", 2),  # later study days are not part of the streak
        ("2026-03-06", 1),  # only a review on 03-06: the run ending 03-05
        ("2026-03-11", 0),  # neither 03-11 nor 03-10 is a study day
        ("2026-03-04", 0),
    ],
)
def test_current_streak(as_of: str | None, streak: int) -> None:
    rows = [
        *_completed_on(1, "s1", "u1", "2026-03-05"),
        review(3, "u1", "x", 1, ts("2026-03-06T12:00")),  # a review does not make a study day
        *_completed_on(4, "s2", "u1", "2026-03-07"),
        *_completed_on(6, "s3", "u1", "2026-03-08"),
        *_completed_on(8, "s4", "u1", "2026-03-09"),
        *_completed_on(10, "s5", "u2", "2026-03-10"),
    ]
    day = None if as_of is None else date.fromisoformat(as_of)
    for folded in both(rows):
        progress = folded.user_progress(day)
        assert progress["current_streak"].to_list()[0] == streak
    # A session on as_of itself extends the run: 10, 09, 08, 07.
    rows += _completed_on(12, "s6", "u1", "2026-03-10")
    for folded in both(rows):
        assert folded.user_progress(date(2026, 3, 10))["current_streak"].to_list() == [4, 1]
        assert folded.user_progress()["current_streak"].to_list() == [4, 1]


def test_default_as_of_is_the_latest_timestamp_not_the_last_event() -> None:
    rows = [
        *_completed_on(1, "s1", "u1", "2026-03-09"),
        *_completed_on(3, "s2", "u1", "2026-03-10"),
        review(5, "u1", "x", 3, ts("2026-02-01T12:00")),  # arrives late, happened long ago
    ]
    for folded in both(rows):
        assert folded.default_as_of() == date(2026, 3, 10)
        assert folded.user_progress()["current_streak"].to_list() == [2]
        assert folded.user_progress()["last_updated"].to_list() == [datetime(2026, 3, 10, 12, 10, tzinfo=UTC)]


def test_new_mastery_count_and_items_learned() -> None:
    rows = [
        review(1, "u1", "x", 20, ts("2026-03-01T10:00")),  # first review: learned; short-term
        review(2, "u1", "x", 21, ts("2026-03-02T10:00")),  # 20 -> 21: new mastery
        review(3, "u1", "x", 30, ts("2026-03-03T10:00")),  # 21 -> 30: already mastered
        review(4, "u1", "x", 2, ts("2026-03-04T10:00")),  # lapse
        review(5, "u1", "x", 25, ts("2026-03-05T10:00")),  # 2 -> 25: mastered again
        review(6, "u1", "y", 400, ts("2026-03-05T11:00")),  # from no review at all: learned and mastered
    ]
    for folded in both(rows):
        assert_models(
            folded,
            [progress_row("u1", "2026-03-05T11:00", total_items_learned=2, long_term_mastered=2)],
            [
                daily_row("u1", "2026-03-01", items_learned=1, items_reviewed=1),
                daily_row("u1", "2026-03-02", items_reviewed=1, new_mastery_count=1),
                daily_row("u1", "2026-03-03", items_reviewed=1),
                daily_row("u1", "2026-03-04", items_reviewed=1),
                daily_row("u1", "2026-03-05", items_learned=1, items_reviewed=2, new_mastery_count=2),
            ],
            [],
        )
    # With cut-offs (3, 10): 20 is already long-term on 03-01, 21 and 30 are no news, 2 lapses, 25 and 400 count.
    for folded in both(rows, FoldOptions(short_term_days=3, long_term_days=10)):
        assert folded.daily_stats()["new_mastery_count"].to_list() == [1, 0, 0, 0, 2]


def test_mastery_classes_at_the_cut_offs() -> None:
    intervals = {"p": 0.5, "q": 1, "r": 6.999, "s": 7, "t": 20.5, "v": 21}
    rows = [review(i + 1, "u1", item, value, ts("2026-03-01T10:00")) for i, (item, value) in enumerate(intervals.items())]
    # An answered item without a review is unlearned and not learned.
    rows += [
        session_started(7, "s1", "u1", 3, ts("2026-03-01T11:00")),
        correct_answer(8, "s1", "w", ts("2026-03-01T11:01"), None),
        correct_answer(9, "s1", "p", ts("2026-03-01T11:02"), None),
    ]
    for folded in both(rows):
        assert_models(
            folded,
            [progress_row("u1", "2026-03-01T11:02", total_items_learned=6, unlearned=2, learning=2,
                          short_term_mastered=2, long_term_mastered=1)],
            [daily_row("u1", "2026-03-01", items_learned=6, items_reviewed=6, new_mastery_count=1)],
        )


def test_items_learned_counts_only_the_first_review() -> None:
    rows = [
        session_started(1, "s1", "u1", 2, ts("2026-03-01T10:00")),
        correct_answer(2, "s1", "x", ts("2026-03-01T10:01"), None),  # answered: unlearned, not learned
        session_completed(3, "s1", 60, ts("2026-03-01T10:02"), None),
        review(4, "u1", "x", 1, ts("2026-03-02T10:00")),  # first review: learned
        review(5, "u1", "x", 3, ts("2026-03-02T11:00")),
        review(6, "u1", "x", 8, ts("2026-03-03T10:00")),
    ]
    for folded in both(rows):
        assert_models(
            folded,
            [progress_row("u1", "2026-03-03T10:00", total_items_learned=1, total_sessions_completed=1,
                          total_study_time_minutes=1, accuracy_rate=0.5, short_term_mastered=1)],
            [
                daily_row("u1", "2026-03-01", sessions_completed=1, study_time_minutes=1, accuracy_rate=0.5),
                daily_row("u1", "2026-03-02", items_learned=1, items_reviewed=2),
                daily_row("u1", "2026-03-03", items_reviewed=1),
            ],
        )


def test_attribution_without_metadata_user_needs_an_earlier_start() -> None:
    rows = [
        correct_answer(1, "s9", "a", ts("2026-03-01T10:00"), None),  # s9 starts later: unknown_user
        session_completed(2, "s8", 30, ts("2026-03-01T10:00"), None),  # s8 starts later: unknown_user
        session_started(3, "s9", "u1", 2, ts("2026-03-01T10:01")),
        correct_answer(4, "s9", "b", ts("2026-03-01T10:02"), None),  # u1 through the start
        session_completed(5, "s9", 60, ts("2026-03-01T10:03"), None),  # 1 (b) of 2
        session_started(6, "s8", "u2", 3, ts("2026-03-01T10:04")),
        # The rejected completion did not complete s8, so this one is accepted: 0 of 3.
        session_completed(7, "s8", 30, ts("2026-03-01T10:05"), None),
    ]
    for folded in both(rows):
        assert_models(
            folded,
            [
                progress_row("u1", "2026-03-01T10:03", total_sessions_completed=1, total_study_time_minutes=1,
                             current_streak=1, accuracy_rate=0.5, unlearned=1),
                progress_row("u2", "2026-03-01T10:05", total_sessions_completed=1, current_streak=1, accuracy_rate=0.0),
            ],
            [
                daily_row("u1", "2026-03-01", sessions_completed=1, study_time_minutes=1, accuracy_rate=0.5),
                daily_row("u2", "2026-03-01", sessions_completed=1, accuracy_rate=0.0),
            ],
            [(1, "CorrectAnswerGiven", "unknown_user"), (2, "SessionCompleted", "unknown_user")],
        )


def test_duplicates_late_answers_and_completion_before_start() -> None:
    rows = [
        # Completed before it started: counts (1 session, 120 s) but adds nothing to accuracy.
        session_completed(1, "s1", 120, ts("2026-03-01T10:00"), "u1"),
        session_started(2, "s1", "u1", 5, ts("2026-03-01T10:01")),
        correct_answer(3, "s1", "a", ts("2026-03-01T10:02"), "u1"),  # answer_after_completion
        session_completed(4, "s1", 60, ts("2026-03-01T10:03"), "u1"),  # duplicate_completion
        session_started(5, "s2", "u1", 2, ts("2026-03-01T10:04")),
        session_started(6, "s2", "u2", 4, ts("2026-03-01T10:05")),  # duplicate_start: u2 gets no row
        correct_answer(7, "s2", "a", ts("2026-03-01T10:06"), None),  # u1, the first start's user
        session_completed(8, "s2", 60, ts("2026-03-01T10:07"), None),  # 1 of 2
    ]
    for folded in both(rows):
        assert_models(
            folded,
            [progress_row("u1", "2026-03-01T10:07", total_sessions_completed=2, total_study_time_minutes=3,
                          current_streak=1, accuracy_rate=0.5, unlearned=1)],
            [daily_row("u1", "2026-03-01", sessions_completed=2, study_time_minutes=3, accuracy_rate=0.5)],
            [
                (3, "CorrectAnswerGiven", "answer_after_completion"),
                (4, "SessionCompleted", "duplicate_completion"),
                (6, "SessionStarted", "duplicate_start"),
            ],
        )


@pytest.mark.parametrize(
    ("options", "stamp", "day"),
    [
        (FoldOptions(day_start_hour=4), "2026-03-10T03:59:59.999999", "2026-03-09"),
        (FoldOptions(day_start_hour=4), "2026-03-10T04:00:00", "2026-03-10"),
        (FoldOptions(), "2026-03-10T03:59:00", "2026-03-10"),
        (FoldOptions(), "2026-03-09T23:59:59.999999", "2026-03-09"),
        # Berlin springs forward on 2026-03-29 at 01:00 UTC (02:00 CET -> 03:00 CEST).
        (FoldOptions("Europe/Berlin", 4), "2026-03-29T01:59:00", "2026-03-28"),  # 03:59 CEST
        (FoldOptions("Europe/Berlin", 4), "2026-03-29T02:00:00", "2026-03-29"),  # 04:00 CEST
        (FoldOptions("Europe/Berlin", 4), "2026-03-10T02:59:00", "2026-03-09"),  # 03:59 CET
        (FoldOptions("Europe/Berlin"), "2026-10-24T22:00:00", "2026-10-25"),  # 00:00 CEST
        (FoldOptions("Europe/Berlin"), "2026-10-25T22:59:00", "2026-10-25"),  # 23:59 CET
        # New York springs forward on 2026-03-08 and falls back on 2026-11-01.
        (FoldOptions("America/New_York"), "2026-03-08T04:59:00", "2026-03-07"),  # 23:59 EST
        (FoldOptions("America/New_York"), "2026-03-08T05:00:00", "2026-03-08"),  # 00:00 EST
        (FoldOptions("America/New_York"), "2026-11-01T03:59:00", "2026-10-31"),  # 23:59 EDT
        (FoldOptions("America/New_York"), "2026-11-01T04:00:00", "2026-11-01"),  # 00:00 EDT
        (FoldOptions("America/New_York", 4), "2026-11-01T08:59:00", "2026-10-31"),  # 03:59 EST
        # Kolkata is UTC+05:30; with the day starting at 23:00.
        (FoldOptions("Asia/Kolkata", 23), "2026-01-01T17:29:00", "2025-12-31"),  # 22:59 IST
        (FoldOptions("Asia/Kolkata", 23), "2026-01-01T17:30:00", "2026-01-01"),  # 23:00 IST
        (FoldOptions("Asia/Kolkata"), "2026-01-01T18:29:59.999999", "2026-01-01"),  # 23:59 IST
        (FoldOptions("Asia/Kolkata"), "2026-01-01T18:30:00", "2026-01-02"),  # 00:00 IST
    ],
)
def test_study_day(options: FoldOptions, stamp: str, day: str) -> None:
    rows = [
        session_started(1, "s1", "u1", 1, ts("2025-06-01T12:00")),
        session_completed(2, "s1", 60, ts(stamp), "u1"),
        review(3, "u1", "x", 1, ts(stamp)),
    ]
    for folded in both(rows, options):
        assert folded.daily_stats()["date"].to_list() == [date.fromisoformat(day)]
        assert folded.default_as_of() == date.fromisoformat(day)


def test_e_mail_never_reaches_a_read_model() -> None:
    rows = [
        user_created(1, "u1", ts("2026-03-01T10:00"), email="ada.lovelace@example.com"),
        row(2, "UserCreated", {"type": "UserCreated", "user_id": "u2", "email": "bob@example.org", "display_name": "Bob"},
            {"user_id": "u2", "timestamp": ts("2026-03-01T10:01")}),
        *_completed_on(3, "s1", "u1", "2026-03-01"),
        row(5, "UserCreated", {"type": "UserCreated", "user_id": 7, "email": "eve@example.net"},  # malformed
            {"user_id": None, "timestamp": ts("2026-03-01T10:02")}),
    ]
    for folded in both(rows):
        frames = [folded.user_progress(), folded.daily_stats(), folded.rejections()]
        assert_no_email(frames)
        assert folded.user_progress()["user_id"].to_list() == ["u1", "u2"]


def test_unknown_types_are_ignored_and_counted() -> None:
    meta = {"user_id": "u1", "timestamp": ts("2026-03-01T10:00")}
    rows = [
        row(3, "DeckCreated", {"type": "DeckCreated", "user_id": "u1"}, meta),
        (7, "ItemAdded", "{not json", "[]"),
        row(8, "sessionstarted", {"type": "SessionStarted", "session_id": "s1", "user_id": "u9", "item_count": 1}, meta),
        user_created(12, "u1", ts("2026-03-01T09:00")),
    ]
    for folded in both(rows):
        assert (folded.events_folded, folded.ignored, folded.position) == (4, 3, 12)
        assert folded.rejections().height == 0
        assert folded.user_progress()["user_id"].to_list() == ["u1"]


_GOOD_META = '{"user_id":null,"timestamp":"2026-01-01T00:00:00.000000Z"}'
_START = '{"type":"SessionStarted","session_id":"s1","user_id":"u1","item_count":%s}'


@pytest.mark.parametrize(
    ("event_type", "data", "meta"),
    [
        ("SessionStarted", '{"type":"SessionStarted","session_id":"s1"', _GOOD_META),  # invalid JSON
        ("SessionStarted", _START % "3.0", _GOOD_META),  # a float where an int is required
        ("SessionStarted", _START % '"3"', _GOOD_META),  # a string where an int is required
        ("SessionStarted", _START % "true", _GOOD_META),
        ("SessionStarted", _START % "1e400", _GOOD_META),
        ("SessionStarted", _START % str(2**64), _GOOD_META),
        ("SessionCompleted", '{"type":"SessionCompleted","session_id":"s1","duration_seconds":-1}', _GOOD_META),
        ("ReviewProcessed", '{"type":"ReviewProcessed","user_id":"u1","item_id":"a","quality":3,"new_interval":1e400,'
         '"easiness_factor":2.5}', _GOOD_META),
        ("ReviewProcessed", '{"type":"ReviewProcessed","user_id":"u1","item_id":"a","quality":3,"new_interval":NaN,'
         '"easiness_factor":2.5}', _GOOD_META),
        ("ReviewProcessed", '{"type":"ReviewProcessed","user_id":"u1","item_id":"a","quality":3,"new_interval":1}',
         _GOOD_META),  # a missing field
        ("SessionStarted", _START.replace("SessionStarted", "SessionCompleted", 1) % "3", _GOOD_META),  # type differs
        ("SessionStarted", _START % "3", '{"user_id":null,"timestamp":"2026-01-01T00:00:00Z"}'),
        ("SessionStarted", _START % "3", '{"user_id":null,"timestamp":"2026-01-01T00:00:00.000000+01:00"}'),
        ("SessionStarted", _START % "3", '{"user_id":null,"timestamp":"2026-12-31T23:59:60.000000Z"}'),  # leap second
        ("SessionStarted", _START % "3", '{"user_id":null,"timestamp":"+026-01-01T00:00:00.000000Z"}'),  # signed year
        ("SessionStarted", _START % "3", '{"user_id":null,"timestamp":"0000-01-01T00:00:00.000000Z"}'),  # year 0
        ("SessionStarted", _START % "3", '{"user_id":5,"timestamp":"2026-01-01T00:00:00.000000Z"}'),
        ("SessionStarted", _START % "3", "[]"),  # metadata that is not an object
        ("SessionStarted", _START % "3", "null"),
        ("SessionStarted", _START % "3", None),  # SQL NULL
        ("SessionStarted", "null", _GOOD_META),  # event_data that is not an object
        ("SessionStarted", None, _GOOD_META),
        ("SessionStarted", "[]", _GOOD_META),
        ("SessionStarted", '{"type":"SessionStarted","session_id":"s1","user_id":5,"item_count":3}', _GOOD_META),
        ("SessionStarted", '{"type":"SessionStarted","session_id":"","user_id":"u1","item_count":3}', _GOOD_META),
        # A raw line break inside a string is not JSON (it must be escaped).
        ("SessionStarted", '{"type":"SessionStarted","session_id":"s\n1","user_id":"u1","item_count":3}', _GOOD_META),
        ("SessionStarted", _START % "3", '{"user_id":null,"timestamp":"2026-01-01T00:00:00.000000Z\r"}'),
    ],
)
def test_corrupt_rows_are_malformed(event_type: str, data: str | None, meta: str | None) -> None:
    good = session_started(1, "s0", "u1", 2, ts("2026-01-01T00:00"))
    for folded in both([good, (2, event_type, data, meta)]):
        assert folded.rejections().rows() == [(2, event_type, "malformed")]
        assert folded.user_progress()["last_updated"].to_list() == [datetime(2026, 1, 1, tzinfo=UTC)]


def test_line_breaks_between_json_tokens_are_whitespace() -> None:
    started = (2, "SessionStarted", '{"type":"SessionStarted",\n"session_id":"s1",\r\n"user_id":"u1","item_count":3}\n',
               '{\n"user_id":null,"timestamp":"2026-01-02T00:00:00.000000Z"}')
    good = session_started(1, "s0", "u1", 2, ts("2026-01-01T00:00"))
    reference, state = both([good, started])
    assert reference.rejections().height == state.rejections().height == 0
    assert state.sessions.sort("session_id")["session_id"].to_list() == ["s0", "s1"]


_FIRST_ROW_CHILD = """
import json, sys
from progress_lab.frames import frame_from_raw
from progress_lab.projections import FoldOptions, fold
from progress_lab.reference import ReferenceFold
meta = '{"user_id":null,"timestamp":"2026-01-01T00:00:00.000000Z"}'
good = (2, "UserCreated", '{"type":"UserCreated","user_id":"u1"}', meta)
for bad in [(1, "UserCreated", "null", meta), (1, "UserCreated", None, meta),
            (1, "UserCreated", good[2], "null"), (1, "UserCreated", good[2], None)]:
    print("folding", bad, flush=True)
    state = fold(frame_from_raw([bad, good]), options=FoldOptions())
    reference = ReferenceFold().fold([bad, good])
    assert state.rejections().rows() == reference.rejections().rows() == [(1, "UserCreated", "malformed")]
print("ok")
"""


def test_a_batch_may_start_with_a_row_that_is_not_an_object() -> None:
    # In a child process: a JSON ``null`` (or SQL NULL) text as the *first* line of a batch
    # has crashed the interpreter inside pyarrow's JSON reader (SIGSEGV, apache/arrow#47409).
    proc = subprocess.run([sys.executable, "-c", _FIRST_ROW_CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.endswith("ok\n"), (
        f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    )


@pytest.mark.parametrize("options", [FoldOptions(), FoldOptions("America/New_York"), FoldOptions("Asia/Kolkata", 23)])
@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z"])
def test_extreme_timestamps_never_stop_a_replay(stamp: str, options: FoldOptions) -> None:
    # Canonical text, so not malformed by the letter of the rule; whatever the folds make
    # of it (fold it, or reject it), they must agree and must not raise: a replay never stops.
    meta = {"user_id": "u1", "timestamp": stamp}
    rows = [
        *_completed_on(1, "s1", "u1", "2026-03-01"),
        row(3, "SessionStarted", {"type": "SessionStarted", "session_id": "s2", "user_id": "u1", "item_count": 1}, meta),
        row(4, "SessionCompleted", {"type": "SessionCompleted", "session_id": "s2", "duration_seconds": 60}, meta),
        review(5, "u1", "x", 30, stamp),
    ]
    both(rows, options)


@pytest.mark.parametrize("second", ['{"a":1}{"a":2}', '{"a":1} {}', '{"a":1}{"~line":1}', '{"a":1}{"\\u007eline":1}'])
@pytest.mark.parametrize("column", ["event_data", "metadata"])
def test_a_text_is_one_json_object_even_when_its_neighbours_close_it(column: str, second: str) -> None:
    # The vectorized fold reads the texts as the lines of one JSON document, where a line
    # break is only whitespace: row 2 closing row 1's object, and row 3 holding two, must
    # not line up into three objects that pass for the three rows (see frames._lines).
    texts = {"event_data": '{"type":"UserCreated","user_id":"u1"}',
             "metadata": '{"user_id":null,"timestamp":"2026-01-01T00:00:00.000000Z"}'}
    open_row = dict(texts, **{column: texts[column][:-1] + ',"x":['})
    closer = dict(texts, **{column: "{}]}"})
    double = dict(texts, **{column: second})
    rows = [(1, "UserCreated", open_row["event_data"], open_row["metadata"]),
            (2, "Unknown", closer["event_data"], closer["metadata"]),
            (3, "Unknown", double["event_data"], double["metadata"])]
    for folded in both(rows):
        assert folded.rejections().rows() == [(1, "UserCreated", "malformed")]
        assert folded.user_progress().height == 0


@pytest.mark.parametrize("extra", ['"~line":1', '"\\u007eline":1', '"~line":null'])
def test_a_payload_may_have_the_line_mark_key(extra: str) -> None:
    data = '{"type":"UserCreated","user_id":"u1",%s}' % extra
    for folded in both([(1, "UserCreated", data, '{"user_id":null,"timestamp":"2026-01-01T00:00:00.000000Z"}')]):
        assert folded.rejections().height == 0
        assert folded.user_progress()["user_id"].to_list() == ["u1"]


@pytest.mark.parametrize("tail", [" null", " 5", ' "s"', " []", " {}", ',"user_id":"u2"}', "}"])
@pytest.mark.parametrize("column", ["event_data", "metadata"])
def test_a_text_with_more_after_its_object_is_malformed(column: str, tail: str) -> None:
    texts = {"event_data": '{"type":"UserCreated","user_id":"u1"}',
             "metadata": '{"user_id":null,"timestamp":"2026-01-01T00:00:00.000000Z"}'}
    good = (1, "UserCreated", texts["event_data"], texts["metadata"])
    bad = dict(texts, **{column: texts[column] + tail})
    rows = [good, (2, "UserCreated", bad["event_data"], bad["metadata"]), (3, *good[1:])]
    for folded in both(rows):
        assert folded.rejections().rows() == [(2, "UserCreated", "malformed")]
        assert folded.user_progress()["user_id"].to_list() == ["u1"]


# Texts that are one good event, hold two objects, or (in pairs, one after the other) open
# an object or array for the next text to close: lined up, some make documents with as
# many objects as there are texts, but not one per text.
_SINGLE_TEXTS = ['{"type":"UserCreated","user_id":"u1"}', '{"a":1}{"a":2}', '{"a":1} {}', "{}", '{"~line":1}',
                 '{"a":1}{"~line":1}', "{}}"]
_TEXT_PAIRS = [('{"type":"UserCreated","user_id":"u2","x":[', "{}]}"),
               ('{"type":"UserCreated","user_id":"u3","x":{"y":', "{}}}")]


@CHEAP
@given(st.lists(st.one_of(st.sampled_from(_SINGLE_TEXTS).map(lambda text: (text,)), st.sampled_from(_TEXT_PAIRS)),
                min_size=1, max_size=5))
def test_json_texts_fold_alike_whatever_their_neighbours(units: list[tuple[str, ...]]) -> None:
    # Both folds must read each text on its own (see frames._lines).
    texts = [text for unit in units for text in unit]
    both([(n, "UserCreated", text, _GOOD_META) for n, text in enumerate(texts, start=1)])
