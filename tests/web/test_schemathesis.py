"""Issue 9, "fuzzers in CI": schemathesis generates requests for every operation of ``/openapi.json``, as
the admin, a user and no one, and every answer must be documented: never a 5xx, a status code the operation
lists, a body that matches the schema given for that status (``ErrorBody`` for every error).

A bounded number of examples per operation (20) keeps this to about a minute; ``HERALD_SCHEMATHESIS_EXAMPLES``
asks for more.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi import checks as openapi_checks

from tests.web.conftest import Api

EXAMPLES = int(os.environ.get("HERALD_SCHEMATHESIS_EXAMPLES", "20"))
CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
]
# /healthz answers 503 by design while parts are down (here: no worker runs), so a load balancer can act; its
# 503 is still held to the documented status and body.
HEALTH_CHECKS = [check for check in CHECKS if check is not schemathesis.checks.not_a_server_error]


@pytest.mark.parametrize("role", ["admin", "user", "anonymous"])
def test_every_operation_answers_as_documented(api: Api, role: str):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    headers = {"admin": api.admin, "user": api.as_user("alice"), "anonymous": {}}[role]
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        checks = HEALTH_CHECKS if operation.path == "/healthz" else CHECKS

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case) -> None:
            case.call_and_validate(headers=headers, checks=checks)  # noqa: B023 (run is called at once)

        try:
            run()
        except BaseException as exc:  # every operation is tried; all failures are reported together
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:1500]}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
