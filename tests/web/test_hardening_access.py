"""Issue 9, defects 2-6 and 8 over HTTP: what a caller may not read answers as if it did not exist, no
value is judged before the right to change it, hidden activity stays hidden, no identity can be taken,
and nothing is dropped silently."""

from __future__ import annotations

from tests.web.conftest import Api


def _bug(api: Api, user: str = "alice", **values) -> dict:
    r = api.client.post(
        f"/api/trackers/{api.world.bugs.id}/artifacts",
        json={"values": {"title": "Crash", **values}},
        headers=api.as_user(user),
    )
    assert r.status_code == 201, r.text
    return r.json()


def _same_as_unknown(api: Api, method: str, known: str, unknown: str, **kw) -> None:
    a = api.client.request(method, known, **kw)
    b = api.client.request(method, unknown, **kw)
    assert a.status_code == b.status_code == 404, (a.text, b.text)
    name = api.world.private.name
    assert name not in a.text
    assert a.json()["error"]["message"].replace(known.split("/")[3], "N") == b.json()["error"][
        "message"
    ].replace(unknown.split("/")[3], "N")


class TestPrivateProjectsDoNotExistForOutsiders:
    def test_create_artifact_in_private_tracker(self, api: Api):
        secret = api.world.secret_bugs.id
        _same_as_unknown(
            api,
            "POST",
            f"/api/trackers/{secret}/artifacts",
            "/api/trackers/999999/artifacts",
            json={"values": {"title": "x"}},
            headers=api.as_user("dave"),
        )

    def test_tracker_subscription_of_private_tracker(self, api: Api):
        secret = api.world.secret_bugs.id
        for state in ("unsubscribed", "following"):
            _same_as_unknown(
                api,
                "PUT",
                f"/api/trackers/{secret}/subscription",
                "/api/trackers/999999/subscription",
                json={"state": state},
                headers=api.as_user("dave"),
            )
        # A member still may.
        r = api.client.put(
            f"/api/trackers/{secret}/subscription",
            json={"state": "unsubscribed"},
            headers=api.as_user("carol"),
        )
        assert r.status_code == 200, r.text


class TestRightsBeforeValues:
    def test_non_member_learns_nothing_of_users(self, api: Api):
        art = _bug(api)
        api.client.patch(
            f"/api/users/{api.world.users['eve'].id}", json={"status": "suspended"}, headers=api.admin
        )
        answers = {
            ref: api.client.patch(
                f"/api/artifacts/{art['id']}",
                json={"values": {"assigned_to": ref}},
                headers=api.as_user("dave"),
            )
            for ref in (api.world.users["eve"].id, "eve", "nobody", 999_999, api.world.users["bob"].id)
        }
        assert {r.status_code for r in answers.values()} == {403}
        assert len({r.text for r in answers.values()}) == 1
        assert "eve" not in answers["eve"].text and "suspended" not in answers["eve"].text


class TestHiddenActivity:
    def test_changesets_of_unreadable_fields_are_not_listed(self, api: Api):
        art = _bug(api)
        r = api.client.patch(
            f"/api/artifacts/{art['id']}",
            json={"values": {"security_score": 9}},
            headers=api.as_user("alice"),
        )
        assert r.status_code == 200, r.text
        hidden_id = r.json()["changeset_id"]
        for viewer in ("dave", "bob"):  # outsider, member (not admin)
            view = api.client.get(f"/api/artifacts/{art['id']}", headers=api.as_user(viewer)).json()
            assert hidden_id not in [c["id"] for c in view["changesets"]]
            assert all(c["is_creation"] or c["changes"] or c["comment"] for c in view["changesets"])
        admin_view = api.client.get(f"/api/artifacts/{art['id']}", headers=api.admin).json()
        assert hidden_id in [c["id"] for c in admin_view["changesets"]]


class TestIdentities:
    def _set_email(self, api: Api, user: str, email: str):
        return api.client.patch(
            f"/api/users/{api.world.users[user].id}", json={"email": email}, headers=api.as_user(user)
        )

    def test_a_user_may_not_take_a_list_address(self, api: Api):
        r = api.client.put(
            f"/api/trackers/{api.world.bugs.id}/notifications",
            json={"lists": [{"addresses": ["Team@Example.org"]}]},
            headers=api.admin,
        )
        assert r.status_code == 200, r.text
        r = self._set_email(api, "dave", "TEAM@example.ORG")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "conflict" and "list" in r.json()["error"]["message"]

    def test_a_user_may_not_take_another_users_address(self, api: Api):
        r = self._set_email(api, "dave", "Alice@Example.org")
        assert r.status_code == 409, r.text

    def test_a_user_may_change_to_a_free_address_or_their_own_in_other_case(self, api: Api):
        assert self._set_email(api, "dave", "DAVE@example.org").status_code == 200
        r = self._set_email(api, "dave", "dave.new@example.org")
        assert r.status_code == 200 and r.json()["email"] == "dave.new@example.org"


class TestNothingDroppedSilently:
    def test_unmailable_addresses_are_refused_at_input(self, api: Api):
        r = api.client.post(
            "/api/users", json={"username": "johnd", "email": "john..doe@example.org"}, headers=api.admin
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "email", r.text
        r = api.client.put(
            f"/api/trackers/{api.world.bugs.id}/notifications",
            json={"lists": [{"addresses": ["list..x@example.org"]}]},
            headers=api.admin,
        )
        assert r.status_code == 422, r.text
        assert "two dots" in r.json()["error"]["message"]

    def test_more_than_100_mentions_is_an_error_not_a_cut(self, api: Api):
        art = _bug(api)
        comment = " ".join(f"@user{i}" for i in range(101))
        r = api.client.patch(
            f"/api/artifacts/{art['id']}", json={"comment": comment}, headers=api.as_user("alice")
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "comment" and "101" in r.json()["error"]["message"]
        ok = " ".join(f"@user{i}" for i in range(100))
        r = api.client.patch(
            f"/api/artifacts/{art['id']}", json={"comment": ok}, headers=api.as_user("alice")
        )
        assert r.status_code == 200, r.text
