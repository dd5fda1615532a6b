"""Issue 9, "the API a user expects": semantics inferred only when unambiguous and warned about otherwise,
subscription states that say what they do, and an update that changes nothing is not an error."""

from __future__ import annotations

from tests.web.conftest import Api


def _tracker(api: Api, fields: list[dict], **extra) -> dict:
    r = api.client.post(
        "/api/trackers",
        json={"project_id": api.world.public.id, "name": "tasks", "fields": fields, **extra},
        headers=api.admin,
    )
    assert r.status_code == 201, r.text
    return r.json()


class TestSemantics:
    def test_conventional_fields_are_inferred_and_said_so(self, api: Api):
        t = _tracker(
            api,
            [
                {"name": "summary", "type": "string"},
                {"name": "details", "type": "string"},
                {"name": "state", "type": "select", "options": ["Open", "Done"]},
                {"name": "severity", "type": "select", "options": ["low", "high"]},
                {"name": "assignee", "type": "user"},
            ],
        )
        assert t["semantics"] == {
            "title": "summary",
            "status": "state",
            "open_values": ["Open"],
            "assigned_to": "assignee",
        }
        assert "semantics.title inferred: field 'summary'" in t["warnings"]

    def test_ambiguous_fields_are_not_guessed_but_warned_about(self, api: Api):
        t = _tracker(
            api,
            [
                {"name": "headline", "type": "string"},
                {"name": "tagline", "type": "string"},
                {"name": "severity", "type": "select", "options": ["low", "high"]},
                {"name": "reviewer", "type": "user"},
            ],
        )
        assert t["semantics"] == {"title": None, "status": None, "open_values": [], "assigned_to": None}
        text = " ".join(t["warnings"])
        assert "[task #N]" in text and "status_change_only" in text and "'cc', never 'assigned'" in text

    def test_explicit_null_is_not_overridden(self, api: Api):
        t = _tracker(api, [{"name": "title", "type": "string"}], semantics={"title": None})
        assert t["semantics"]["title"] is None

    def test_sole_string_field_is_the_title(self, api: Api):
        t = _tracker(api, [{"name": "headline", "type": "string"}])
        assert t["semantics"]["title"] == "headline"


def _bug(api: Api) -> dict:
    r = api.client.post(
        f"/api/trackers/{api.world.bugs.id}/artifacts",
        json={"values": {"title": "Crash", "cc": ["dave"]}},
        headers=api.as_user("alice"),
    )
    assert r.status_code == 201, r.text
    return r.json()


class TestSubscriptionStates:
    def test_states_read_back_with_their_meaning(self, api: Api):
        art = _bug(api)
        url = f"/api/artifacts/{art['id']}/subscription"
        dave = api.as_user("dave")
        r = api.client.get(url, headers=dave)
        assert r.status_code == 200 and r.json()["state"] == "default", r.text
        assert "cc" in r.json()["meaning"] or "reason" in r.json()["meaning"]
        for state in ("unsubscribed", "following", "default"):
            r = api.client.put(url, json={"state": state}, headers=dave)
            assert r.status_code == 200 and r.json()["state"] == state, r.text
            assert api.client.get(url, headers=dave).json()["state"] == state
        assert api.client.put(url, json={"state": "unsubscribed"}, headers=dave).status_code == 200
        assert api.client.delete(url, headers=dave).status_code == 204  # DELETE: back to "default"
        assert api.client.get(url, headers=dave).json()["state"] == "default"

    def test_tracker_states(self, api: Api):
        url = f"/api/trackers/{api.world.bugs.id}/subscription"
        dave = api.as_user("dave")
        assert api.client.get(url, headers=dave).json()["state"] == "default"
        r = api.client.put(url, json={"state": "unsubscribed"}, headers=dave)
        assert (
            r.json()["state"] == "unsubscribed"
            and api.client.get(url, headers=dave).json()["state"] == "unsubscribed"
        )
        r = api.client.put(url, json={"state": "default"}, headers=dave)
        assert r.json()["state"] == "default"


class TestNoOpUpdate:
    def test_an_update_that_changes_nothing_answers_200_without_changeset(self, api: Api):
        art = _bug(api)
        before = len(api.dispatcher.committed)
        r = api.client.patch(
            f"/api/artifacts/{art['id']}", json={"values": {"title": "Crash"}}, headers=api.as_user("alice")
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["changeset_id"] is None and body["notification"] is None
        assert body["version"] == art["version"]
        assert len(api.dispatcher.committed) == before
        r = api.client.patch(f"/api/artifacts/{art['id']}", json={}, headers=api.as_user("alice"))
        assert r.status_code == 200 and r.json()["changeset_id"] is None


class TestOneArtifactShape:
    ARTIFACT_KEYS = {
        "id",
        "tracker_id",
        "project_id",
        "submitted_by",
        "submitted_at",
        "last_updated_at",
        "version",
        "values",
    }

    def test_create_update_and_read_return_the_artifact_flat(self, api: Api):
        alice = api.as_user("alice")
        created = api.client.post(
            f"/api/trackers/{api.world.bugs.id}/artifacts",
            json={"values": {"title": "Crash"}},
            headers=alice,
        ).json()
        url = f"/api/artifacts/{created['id']}"
        updated = api.client.patch(url, json={"values": {"title": "Crash on save"}}, headers=alice).json()
        unchanged = api.client.patch(url, json={"values": {"title": "Crash on save"}}, headers=alice).json()
        read = api.client.get(url, headers=alice).json()
        write_keys = self.ARTIFACT_KEYS | {"changeset_id", "notification"}
        assert set(created) == set(updated) == set(unchanged) == write_keys
        assert set(read) == self.ARTIFACT_KEYS | {"changesets"}
        assert created["id"] == updated["id"] == read["id"]
        assert updated["values"] == read["values"] == {"title": "Crash on save"}
        assert (
            (created["version"], updated["version"], unchanged["version"])
            == (1, 2, 2)
            == (1, 2, read["version"])
        )
        assert updated["changeset_id"] == read["changesets"][-1]["id"]
        assert updated["notification"]["status"] == f"/api/changesets/{updated['changeset_id']}/notification"
        assert unchanged["changeset_id"] is None and unchanged["notification"] is None


def test_every_answer_key_is_declared_in_the_openapi_document(api: Api):
    """The answer models let undeclared keys through rather than drop them; this keeps them declared."""
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]

    def declared(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    r = api.client.post("/api/users", json={"username": "zed", "email": "zed@example.org"}, headers=api.admin)
    assert set(r.json()) == declared("UserCreated")
    user = api.client.get(f"/api/users/{r.json()['id']}", headers=api.admin).json()
    assert set(user) == declared("User")
    r = api.client.post("/api/projects", json={"name": "zp", "members": ["zed"]}, headers=api.admin)
    assert set(r.json()) == declared("Project")
    r = api.client.post(
        "/api/trackers",
        json={
            "project_id": r.json()["id"],
            "name": "t",
            "fields": [{"name": "title", "type": "string"}],
            "notifications": {"lists": [{"addresses": ["zl@example.org"]}]},
        },
        headers=api.admin,
    )
    tracker = r.json()
    assert set(tracker) == declared("TrackerCreated")
    assert set(tracker["fields"][0]) == declared("FieldView")
    assert set(tracker["semantics"]) == declared("SemanticsView")
    assert set(tracker["notifications"]) == declared("NotificationsView")
    assert set(tracker["notifications"]["lists"][0]) == declared("ListView")
    alice = api.as_user("alice")
    art = api.client.post(
        f"/api/trackers/{api.world.bugs.id}/artifacts",
        json={"values": {"title": "x"}, "comment": "c"},
        headers=alice,
    ).json()
    assert set(art) == declared("ArtifactWritten") and set(art["notification"]) == declared(
        "NotificationLink"
    )
    read = api.client.get(f"/api/artifacts/{art['id']}", headers=alice).json()
    assert set(read) == declared("ArtifactRead") and set(read["changesets"][0]) == declared("ChangesetView")
    sub = api.client.get(f"/api/artifacts/{art['id']}/subscription", headers=alice).json()
    assert set(sub) == declared("ArtifactSubscription")
    assert set(api.client.get("/healthz").json()) == declared("Health")
