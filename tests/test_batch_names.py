"""Default batch names: English plurals, case kept, and never two types on one name."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_batcher import batch_type_for


@pytest.mark.parametrize(
    ("single", "batch"),
    [
        ("JOB_STARTED", "JOBS_BATCH_STARTED"),
        ("THUMBNAIL_GENERATED", "THUMBNAILS_BATCH_GENERATED"),
        ("JOB_PROGRESS_UPDATED", "JOBS_BATCH_PROGRESS_UPDATED"),
        ("BOX_MOVED", "BOXES_BATCH_MOVED"),
        ("ENTRY_ADDED", "ENTRIES_BATCH_ADDED"),
        ("CITY_RENAMED", "CITIES_BATCH_RENAMED"),
        ("KEY_ROTATED", "KEYS_BATCH_ROTATED"),
        ("CLASS_ADDED", "CLASSES_BATCH_ADDED"),
        ("BATCH_SEALED", "BATCHES_BATCH_SEALED"),
        ("CASE_OPENED", "CASES_BATCH_OPENED"),
        ("job_started", "jobs_batch_started"),
        ("entry_added", "entries_batch_added"),
        ("box_moved", "boxes_batch_moved"),
        # the type plus _BATCH where a plural would read back two ways
        ("PING", "PING_BATCH"),
        ("ping", "ping_batch"),
        ("JOBS_DONE", "JOBS_DONE_BATCH"),
        ("STATUS_CHANGED", "STATUS_CHANGED_BATCH"),
        ("CACHE_CLEARED", "CACHE_CLEARED_BATCH"),
    ],
)
def test_batch_type_naming(single: str, batch: str) -> None:
    assert batch_type_for(single) == batch


def test_job_done_and_jobs_done_get_different_names() -> None:
    assert batch_type_for("JOB_DONE") != batch_type_for("JOBS_DONE")
    assert batch_type_for("job_done") != batch_type_for("jobs_done")


# Words built from the letters English plurals turn on (S, X, Y, Z, CH, SH, IE, E),
# so collisions such as BOX/BOXE, CITY/CITIE, CACH/CACHE, JOB/JOBS are all tried.
_pieces = st.sampled_from(["S", "X", "Y", "Z", "CH", "SH", "IE", "E", "A", "O", "B", "T", "I"])
_words = st.lists(_pieces, min_size=1, max_size=4).map("".join)
_upper_types = st.lists(_words, min_size=1, max_size=3).map("_".join)
# A type with a BATCH word of its own may meet another's name (documented).
_upper_types = _upper_types.filter(lambda t: "BATCH" not in t.split("_"))
_types = st.one_of(_upper_types, _upper_types.map(str.lower))


@settings(max_examples=200, deadline=None)
@given(st.lists(_types, min_size=2, max_size=30, unique=True))
def test_distinct_types_never_share_a_batch_name(types: list[str]) -> None:
    names = [batch_type_for(t) for t in types]
    assert len(set(names)) == len(names), sorted(zip(names, types, strict=True))


@settings(max_examples=100, deadline=None)
@given(_upper_types)
def test_case_is_kept(event_type: str) -> None:
    assert batch_type_for(event_type).isupper()
    assert batch_type_for(event_type.lower()).islower()
    assert batch_type_for(event_type).lower() == batch_type_for(event_type.lower())


@settings(max_examples=100, deadline=None)
@given(_types)
def test_a_batch_name_is_never_a_member_type_of_its_own(event_type: str) -> None:
    name = batch_type_for(event_type)
    assert name != event_type
    assert "BATCH" in name.upper().split("_")
