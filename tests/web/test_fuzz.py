"""Whatever a client sends, the API answers with a 2xx or a 4xx carrying a message: never a 500."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.web.conftest import Api

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["title", "status", "assigned_to", "cc", "description", "severity", "estimate", "due", "internal_notes",
     "security_score", "nope"]
)  # fmt: skip
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "values": st.dictionaries(field_names, json_values, max_size=5) | json_values,
            "comment": st.text(max_size=50) | json_values,
            "comment_private": st.booleans() | json_values,
            "version": st.integers() | json_values,
        },
    ),
)
FUZZ = settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


def _ok(r) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["error"]["message"]


@FUZZ
@given(body=bodies, user=st.sampled_from(["alice", "bob", "dave"]))
def test_artifact_writes_never_500(api: Api, body, user):
    headers = {**api.as_user(user), "Content-Type": "application/json"}
    content = json.dumps(body).encode()
    _ok(api.client.post(f"/api/trackers/{api.world.bugs.id}/artifacts", content=content, headers=headers))
    _ok(api.client.patch("/api/artifacts/1", content=content, headers=headers))


@FUZZ
@given(body=json_values)
def test_admin_writes_never_500(api: Api, body):
    content = json.dumps(body).encode()
    headers = {**api.admin, "Content-Type": "application/json"}
    for path in (
        "/api/users",
        "/api/projects",
        "/api/trackers",
        f"/api/trackers/{api.world.bugs.id}/notifications",
    ):
        method = api.client.put if path.endswith("notifications") else api.client.post
        _ok(method(path, content=content, headers=headers))


@FUZZ
@given(raw=st.binary(max_size=200), path=st.text(max_size=40))
def test_garbage_bytes_and_paths_never_500(api: Api, raw, path):
    headers = {**api.as_user("alice"), "Content-Type": "application/json"}
    _ok(api.client.post(f"/api/trackers/{api.world.bugs.id}/artifacts", content=raw, headers=headers))
    r = api.client.get("/api/artifacts/" + quote(path, safe=""), headers=api.admin)
    assert r.status_code < 500
