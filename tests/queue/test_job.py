"""The job and its wire format: strict decoding, never an exception other than MalformedJob."""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.queue import Job, MalformedJob, decode_job
from herald.queue.base import MAX_ID, MAX_PAYLOAD_BYTES

GOOD_ID = uuid.uuid4().hex


def payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"v": 1, "id": GOOD_ID, "changeset_id": 12, "enqueued_at": 1_700_000_000.25}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()

jobs = st.builds(
    Job,
    id=st.uuids(version=4).map(lambda u: u.hex),
    changeset_id=st.integers(min_value=1, max_value=MAX_ID),
    enqueued_at=st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False),
)


def test_new_job_has_a_uuid4_hex_id_and_is_stamped_now() -> None:
    before = time.time()
    job = Job.new(5)
    assert uuid.UUID(hex=job.id).version == 4 and len(job.id) == 32
    assert before <= job.enqueued_at <= time.time()
    assert (job.changeset_id, job.attempts, job.receipt) == (5, 0, None)


def test_wire_format_is_versioned_json_without_queue_state() -> None:
    job = Job(id=GOOD_ID, changeset_id=12, enqueued_at=1.5).claimed(3, "1-0")
    assert json.loads(job.to_json()) == {"v": 1, "id": GOOD_ID, "changeset_id": 12, "enqueued_at": 1.5}


@pytest.mark.parametrize("changeset_id", [0, -1, True, "12", 1.0, MAX_ID + 1])
def test_a_job_cannot_be_built_with_a_bad_changeset_id(changeset_id: Any) -> None:
    with pytest.raises(ValueError, match="changeset_id"):
        Job.new(changeset_id)


@given(jobs)
def test_every_job_survives_the_round_trip(job: Job) -> None:
    assert decode_job(job.to_json()) == job
    assert decode_job(job.to_json().encode()) == job


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "not JSON"),
        (b"not json", "not JSON"),
        (b"\x80\x81", "not UTF-8"),
        ("\udcff", "not UTF-8"),
        (b"[1, 2]", "not an object"),
        (b"null", "not an object"),
        (b'"a string"', "not an object"),
        (json.dumps(payload(v=2)), "version"),
        (json.dumps(payload(v=True)), "version"),
        (json.dumps(payload(v="1")), "version"),
        (json.dumps(payload(v=_DROP)), "version"),
        (json.dumps(payload(id=_DROP)), "missing id"),
        (json.dumps(payload(extra=1)), "unexpected"),
        (json.dumps(payload(id=GOOD_ID.upper())), "id must be"),
        (json.dumps(payload(id=GOOD_ID[:31])), "id must be"),
        (json.dumps(payload(id=7)), "id must be"),
        (json.dumps(payload(changeset_id=True)), "changeset_id"),
        (json.dumps(payload(changeset_id=False)), "changeset_id"),
        (json.dumps(payload(changeset_id=-3)), "changeset_id"),
        (json.dumps(payload(changeset_id=0)), "changeset_id"),
        (json.dumps(payload(changeset_id=2**63)), "changeset_id"),
        (json.dumps(payload(changeset_id="12")), "changeset_id"),
        (json.dumps(payload(changeset_id=12.0)), "changeset_id"),
        (json.dumps(payload(changeset_id=None)), "changeset_id"),
        (json.dumps(payload(enqueued_at=True)), "enqueued_at"),
        (json.dumps(payload(enqueued_at=-1)), "enqueued_at"),
        (json.dumps(payload(enqueued_at="now")), "enqueued_at"),
        (json.dumps(payload(enqueued_at=math.nan)), "not JSON"),
        (json.dumps(payload(enqueued_at=math.inf)), "not JSON"),
        (json.dumps(payload()).replace("1700000000.25", "1e400"), "enqueued_at"),
        (json.dumps(payload())[:-1] + ', "v": 1}', "duplicated"),
        (b"[" * 100_000, "larger than"),
        (b"[" * 60_000, "not JSON"),
        (json.dumps(payload(pad="x" * MAX_PAYLOAD_BYTES)), "larger than"),
        ("é" * (MAX_PAYLOAD_BYTES // 2 + 1), "larger than"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(raw: bytes | str, why: str) -> None:
    with pytest.raises(MalformedJob, match=why) as info:
        decode_job(raw)
    assert info.value.reason == str(info.value)
    assert len(info.value.reason) < 300


def test_only_bytes_and_text_are_payloads() -> None:
    with pytest.raises(MalformedJob, match="not bytes or text"):
        decode_job(12)  # type: ignore[arg-type]
    assert decode_job(memoryview(json.dumps(payload()).encode())).id == GOOD_ID


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_job_or_raise_malformed(raw: bytes) -> None:
    with contextlib.suppress(MalformedJob):
        decode_job(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@given(json_values)
def test_any_json_that_is_not_exactly_a_job_is_refused(value: Any) -> None:
    with pytest.raises(MalformedJob):
        decode_job(json.dumps(value))


@given(
    field=st.sampled_from(["v", "id", "changeset_id", "enqueued_at"]),
    value=st.none()
    | st.booleans()
    | st.text(max_size=10)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    | st.integers(max_value=0),
)
def test_a_wrongly_typed_field_is_refused(field: str, value: Any) -> None:
    if field == "enqueued_at" and value == 0 and type(value) is int:
        return  # 0 is a valid (if old) time
    with pytest.raises(MalformedJob):
        decode_job(json.dumps(payload(**{field: value})))
