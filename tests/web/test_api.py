"""The JSON API over HTTP: happy paths, and every kind of bad input answered 4xx with a message."""

from __future__ import annotations

import pytest

from tests.web.conftest import Api


def bug(api: Api, user: str = "alice", **values) -> dict:
    r = api.client.post(
        f"/api/trackers/{api.world.bugs.id}/artifacts",
        json={"values": {"title": "Crash on save", **values}},
        headers=api.as_user(user),
    )
    assert r.status_code == 201, r.text
    return r.json()


def assert_error(r, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert fragment in body["error"]["message"], body


class TestHappyPaths:
    def test_user_project_tracker_artifact(self, api: Api):
        r = api.client.post(
            "/api/users",
            json={
                "username": "zoe",
                "email": "zoe@example.org",
                "language": "fr",
                "timezone": "Europe/Paris",
            },
            headers=api.admin,
        )
        assert r.status_code == 201, r.text
        zoe = r.json()
        assert zoe["token"] and zoe["language"] == "fr"
        r = api.client.post(
            "/api/projects", json={"name": "apollo", "public": False, "members": ["zoe"]}, headers=api.admin
        )
        assert r.status_code == 201, r.text
        project = r.json()
        assert project["members"] == [zoe["id"]]
        r = api.client.post(
            "/api/trackers",
            json={
                "project_id": project["id"],
                "name": "stories",
                "item_name": "story",
                "fields": [
                    {"name": "summary", "type": "string"},
                    {"name": "state", "type": "select", "options": ["To do", "Done"]},
                ],
                "semantics": {"title": "summary", "status": "state"},
            },
            headers=api.admin,
        )
        assert r.status_code == 201, r.text
        tracker = r.json()
        assert tracker["semantics"] == {
            "title": "summary",
            "status": "state",
            "open_values": ["To do"],
            "assigned_to": None,
        }
        headers = {"Authorization": f"Bearer {zoe['token']}"}
        r = api.client.post(
            f"/api/trackers/{tracker['id']}/artifacts",
            json={"values": {"summary": "Land", "state": "To do"}},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["notification"]["mode"] == "inline"
        art_id = created["id"]
        r = api.client.patch(
            f"/api/artifacts/{art_id}", json={"values": {"state": "Done"}, "comment": "done"}, headers=headers
        )
        assert r.status_code == 200, r.text
        assert [c for c, _ in api.dispatcher.committed] == [created["changeset_id"], r.json()["changeset_id"]]
        r = api.client.get(f"/api/artifacts/{art_id}", headers=headers)
        assert r.json()["values"] == {"summary": "Land", "state": "Done"}
        assert [c["comment"] for c in r.json()["changesets"]] == [None, "done"]

    def test_read_filters_fields_and_private_comments(self, api: Api):
        art = bug(api, internal_notes="root cause: bad cache", security_score=7)
        api.client.patch(
            f"/api/artifacts/{art['id']}",
            json={"comment": "members only", "comment_private": True},
            headers=api.as_user("alice"),
        )
        outsider = api.client.get(f"/api/artifacts/{art['id']}", headers=api.as_user("dave")).json()
        assert "internal_notes" not in outsider["values"] and "security_score" not in outsider["values"]
        assert "members only" not in str(outsider)
        assert "bad cache" not in str(outsider)
        member = api.client.get(f"/api/artifacts/{art['id']}", headers=api.as_user("bob")).json()
        assert member["values"]["internal_notes"] == "root cause: bad cache"
        assert "security_score" not in member["values"]
        admin_view = api.client.get(f"/api/artifacts/{art['id']}", headers=api.admin).json()
        assert admin_view["values"]["security_score"] == 7

    def test_subscription_endpoints(self, api: Api):
        art = bug(api)
        url = f"/api/artifacts/{art['id']}/subscription"
        r = api.client.put(url, json={"state": "following"}, headers=api.as_user("dave"))
        assert r.status_code == 200 and r.json()["state"] == "following"
        assert api.client.delete(url, headers=api.as_user("dave")).status_code == 204
        r = api.client.put(
            f"/api/trackers/{api.world.bugs.id}/subscription",
            json={"state": "unsubscribed"},
            headers=api.as_user("dave"),
        )
        assert r.status_code == 200

    def test_user_edits_own_preferences_but_not_status(self, api: Api):
        uid = api.world.users["bob"].id
        r = api.client.patch(f"/api/users/{uid}", json={"mail_format": "text"}, headers=api.as_user("bob"))
        assert r.status_code == 200 and r.json()["mail_format"] == "text"
        assert (
            api.client.patch(
                f"/api/users/{uid}", json={"status": "suspended"}, headers=api.as_user("bob")
            ).status_code
            == 403
        )
        assert api.client.get(f"/api/users/{uid}", headers=api.as_user("carol")).status_code == 404

    def test_healthz_and_openapi(self, api: Api):
        r = api.client.get("/healthz")  # no worker runs here: the recovery worker and relay are missing
        assert r.status_code == 503
        assert r.json() == {
            "status": "degraded",
            "database": "ok",
            "missing": ["workers", "outbox-relay"],
            "workers": {"alive": 0, "expected": 1},
        }
        spec = api.client.get("/openapi.json").json()
        for path in [
            "/api/users",
            "/api/projects",
            "/api/trackers",
            "/api/trackers/{tracker_id}/artifacts",
            "/api/artifacts/{artifact_id}",
            "/api/artifacts/{artifact_id}/subscription",
            "/api/changesets/{changeset_id}/notification",
        ]:
            assert path in spec["paths"], path


class TestAuth:
    def test_missing_and_wrong_tokens(self, api: Api):
        assert_error(api.client.post("/api/users", json={}), 401, "missing bearer token")
        r = api.client.post("/api/users", json={}, headers={"Authorization": "Bearer nope"})
        assert_error(r, 401, "invalid or revoked token")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(
            api.client.post("/api/users", json={}, headers={"Authorization": "Basic abc"}), 401, "bearer"
        )

    def test_user_token_cannot_administer_and_admin_cannot_author(self, api: Api):
        r = api.client.post(
            "/api/users", json={"username": "x", "email": "x@example.org"}, headers=api.as_user("alice")
        )
        assert_error(r, 403, "admin token")
        r = api.client.post(
            f"/api/trackers/{api.world.bugs.id}/artifacts", json={"values": {"title": "x"}}, headers=api.admin
        )
        assert_error(r, 403, "own token")

    def test_suspended_user_is_locked_out(self, api: Api):
        uid = api.world.users["eve"].id
        assert (
            api.client.patch(f"/api/users/{uid}", json={"status": "suspended"}, headers=api.admin).status_code
            == 200
        )
        assert_error(
            api.client.get(f"/api/users/{uid}", headers=api.as_user("eve")), 401, "invalid or revoked"
        )


class TestBadInput:
    @pytest.mark.parametrize(
        ("body", "fragment"),
        [
            (b"{not json", "JSON"),
            (b"[]", "valid dictionary"),
            (b'{"values": {"title": 5}}', "must be a string"),
            (b'{"values": {"status": "Nope"}}', "must be one of"),
            (b'{"values": {"title": "x"}, "comment_private": "yes"}', "comment_private"),
            (b'{"values": {"title": "x"}, "surprise": 1}', "surprise"),
            (b'{"values": {"title": "x", "severity": "high"}}', "whole number"),
            (b'{"values": {"title": "x", "assigned_to": 424242}}', "does not exist"),
            (b'{"values": {"title": "x", "cc": [true]}}', "positive id"),
        ],
    )
    def test_malformed_artifact_bodies(self, api: Api, body: bytes, fragment: str):
        r = api.client.post(
            f"/api/trackers/{api.world.bugs.id}/artifacts",
            content=body,
            headers={**api.as_user("alice"), "Content-Type": "application/json"},
        )
        assert r.status_code in (400, 422), r.text
        assert fragment.lower() in r.json()["error"]["message"].lower()
        assert api.dispatcher.committed == []

    @pytest.mark.parametrize(
        "path",
        [
            "/api/artifacts/0",
            "/api/artifacts/abc",
            "/api/artifacts/99999999999999999999999",
            "/api/artifacts/-4",
        ],
    )
    def test_ids_out_of_range(self, api: Api, path: str):
        assert api.client.get(path, headers=api.admin).status_code == 422

    def test_unknown_ids(self, api: Api):
        assert_error(api.client.get("/api/artifacts/4242", headers=api.admin), 404, "does not exist")
        r = api.client.post("/api/trackers/4242/artifacts", json={"values": {}}, headers=api.as_user("alice"))
        assert_error(r, 404, "tracker 4242")
        assert_error(
            api.client.get("/api/changesets/4242/notification", headers=api.admin), 404, "no notification"
        )
        assert api.client.get("/api/nowhere").status_code == 404

    def test_oversized_body_is_refused_before_parsing(self, api: Api):
        big = b'{"values": {"title": "x"}, "comment": "' + b"a" * (2 << 20) + b'"}'
        r = api.client.post(
            f"/api/trackers/{api.world.bugs.id}/artifacts",
            content=big,
            headers={**api.as_user("alice"), "Content-Type": "application/json"},
        )
        assert r.status_code == 413
        assert api.dispatcher.committed == []

    def test_long_comment_within_body_limit_is_refused_by_rule(self, api: Api):
        art = bug(api)
        r = api.client.patch(
            f"/api/artifacts/{art['id']}", json={"comment": "a" * 70_000}, headers=api.as_user("alice")
        )
        assert r.status_code == 422

    def test_duplicate_names_conflict(self, api: Api):
        r = api.client.post(
            "/api/users", json={"username": "alice", "email": "a2@example.org"}, headers=api.admin
        )
        assert_error(r, 409, "taken")

    def test_stale_version_conflicts(self, api: Api):
        art = bug(api)
        api.client.patch(
            f"/api/artifacts/{art['id']}", json={"values": {"severity": 1}}, headers=api.as_user("alice")
        )
        r = api.client.patch(
            f"/api/artifacts/{art['id']}",
            json={"values": {"severity": 2}, "version": 1},
            headers=api.as_user("alice"),
        )
        assert_error(r, 409, "version 2")

    def test_private_artifact_is_a_404_for_outsiders(self, api: Api):
        r = api.client.post(
            f"/api/trackers/{api.world.secret_bugs.id}/artifacts",
            json={"values": {"title": "s"}},
            headers=api.as_user("carol"),
        )
        art_id = r.json()["id"]
        assert_error(
            api.client.get(f"/api/artifacts/{art_id}", headers=api.as_user("bob")), 404, "does not exist"
        )
        r = api.client.patch(f"/api/artifacts/{art_id}", json={"comment": "hi"}, headers=api.as_user("bob"))
        assert r.status_code == 404
