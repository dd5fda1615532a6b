"""Issue 9, defects 9 (sign-in throttle), 10 (Host-header redirect) and 13 (error shapes, OpenAPI)."""

from __future__ import annotations

import pytest

from herald.web.throttle import LoginThrottle
from tests.web.conftest import Api


class TestLoginThrottle:
    def test_five_failures_a_minute_then_429_with_retry_after(self, api: Api):
        for _ in range(5):
            r = api.client.post("/admin/login", data={"token": "guess"}, follow_redirects=False)
            assert r.status_code == 401
        r = api.client.post("/admin/login", data={"token": "guess"}, follow_redirects=False)
        assert r.status_code == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        # Even the right token waits: a guesser must not learn that it found it.
        token = api.admin["Authorization"].split()[1]
        r = api.client.post("/admin/login", data={"token": token}, follow_redirects=False)
        assert r.status_code == 429

    def test_window_slides_and_success_clears(self):
        now = [0.0]
        t = LoginThrottle(max_failures=2, window=60, clock=lambda: now[0])
        t.failed("a")
        now[0] = 30
        t.failed("a")
        assert t.retry_after("a") == 30 and t.retry_after("b") is None
        now[0] = 60.5
        assert t.retry_after("a") is None  # the first failure left the window
        t.failed("a")
        assert t.retry_after("a") is not None
        t.succeeded("a")
        assert t.retry_after("a") is None

    def test_memory_is_bounded(self):
        t = LoginThrottle(max_failures=1, max_clients=3, clock=lambda: 0.0)
        for i in range(10):
            t.failed(str(i))
        assert [t.retry_after(str(i)) is not None for i in range(10)].count(True) == 3


class TestRedirects:
    @pytest.mark.parametrize("path", ["/admin/", "/api/users/"])
    def test_no_redirect_is_built_from_the_host_header(self, api: Api, path: str):
        r = api.client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
        assert "evil.example" not in r.headers.get("location", "")
        if r.status_code in (301, 302, 303, 307, 308):
            assert r.headers["location"].startswith("/")

    def test_admin_slash_goes_to_admin(self, api: Api):
        r = api.client.get("/admin/", follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (307, "/admin")


class TestErrorShapes:
    def test_chunked_body_over_1_mib_is_413_too_large(self, api: Api):
        def chunks():
            for _ in range(12):
                yield b"x" * 100_000

        r = api.client.post(
            "/api/users", content=chunks(), headers={**api.admin, "content-type": "application/json"}
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "too_large"

    def test_malformed_json_is_400_on_the_body(self, api: Api):
        r = api.client.post(
            "/api/users",
            content=b'{"username": "x",,}',
            headers={**api.admin, "content-type": "application/json"},
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_json" and err["field"] == "body"
        assert "character 17" in err["message"]

    def test_http_exception_422_is_invalid(self, api: Api):
        uid = api.world.users["bob"].id
        r = api.client.patch(f"/api/users/{uid}", json={"email": None}, headers=api.admin)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid", r.text

    def test_every_problem_at_once_with_a_hint(self, api: Api):
        r = api.client.post(
            "/api/trackers",
            json={
                "project_id": api.world.public.id,
                "name": "tasks",
                "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "select", "values": ["x"]}],
                "semantic": {},
            },
            headers=api.admin,
        )
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["field"] == "fields[1]"
        assert "fields[1]: unknown key 'values' — did you mean 'options'?" in err["message"]
        assert "unknown key 'semantic' — did you mean 'semantics'?" in err["message"]

    def test_openapi_lists_error_responses_and_constraints(self, api: Api):
        spec = api.client.get("/openapi.json").json()
        post = spec["paths"]["/api/trackers/{tracker_id}/artifacts"]["post"]
        for status in ("400", "401", "403", "404", "409", "413", "422"):
            assert status in post["responses"], status
        assert post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorBody"
        )
        user = spec["components"]["schemas"]["UserCreate"]["properties"]
        assert user["username"]["pattern"] and user["email"]["format"] == "email"
        assert user["username"]["maxLength"] == 64 and user["username"]["minLength"] == 1
