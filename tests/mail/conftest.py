"""Every mail test that uses the plain ``smtp_server`` runs twice: with commands one by one, and with
PIPELINING advertised, so herald's pipelined path (RFC 2920) meets every scripted refusal too."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.smtp import SmtpServer


@pytest.fixture(params=[False, True], ids=["stepwise", "pipelined"])
def smtp_server(request: pytest.FixtureRequest, make_smtp_server: Callable[..., SmtpServer]) -> SmtpServer:
    return make_smtp_server(pipelining=request.param)
