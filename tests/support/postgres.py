"""A private PostgreSQL database per test session on the machine's server (127.0.0.1:5432)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.support.services import service_missing

ADMIN_URL = os.environ.get("HERALD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin_engine():
    return create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A freshly created, empty database; dropped after the test."""
    name = f"herald_test_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any connection failure means the service is missing
        engine.dispose()
        service_missing(f"PostgreSQL at {ADMIN_URL} unavailable: {exc.__class__.__name__}")
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
