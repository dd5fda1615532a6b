"""Fixtures of the chaos suite: the installation (:mod:`tests.chaos.stack`) and the profile."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import select

from herald.config import load_settings
from herald.tracker.models import User
from herald.tracker.users import create_user
from tests.chaos import profile as P
from tests.chaos.stack import NOTIFIED, REFUSED_REPLY, ChaosStack, Frontend, chaos_env, email
from tests.support.smtp import SmtpServer
from tests.support.tracker import build_world, make_database


@pytest.fixture
def make_chaos_stack(tmp_path: Path, smtp_server: SmtpServer, request: pytest.FixtureRequest):
    """``make_chaos_stack(database="sqlite"|"postgresql", queue="redis"|"sql")``: the installation, with
    the front end up and the workers not yet started. Everything is stopped after the test."""
    stacks: list[ChaosStack] = []

    def make(database: str, queue: str) -> ChaosStack:
        sqlite = f"sqlite:///{tmp_path / 'herald.db'}"
        url = request.getfixturevalue("pg_url") if database == "postgresql" else sqlite
        redis = request.getfixturevalue("own_redis_server") if queue == "redis" else None
        admin_token = secrets.token_hex(24)
        env = chaos_env(tmp_path, url, smtp_server, redis, admin_token)
        settings = load_settings(env=env)
        db = make_database(settings.database_url)
        world = build_world(db)
        with db.session() as s:
            for name in NOTIFIED:
                if name not in world.users:
                    create_user(s, username=name, email=email(name), real_name=name.capitalize())
        with db.read() as s:
            users = {uid: address for uid, address in s.execute(select(User.id, User.email))}
        for name in NOTIFIED:
            if name.startswith("bounce"):
                smtp_server.refuse_recipient(email(name), REFUSED_REPLY)
        frontend = Frontend(env, tmp_path)
        stack = ChaosStack(
            env, settings, db, world, smtp_server, redis, frontend, tmp_path, admin_token, users
        )
        stacks.append(stack)
        frontend.start()
        return stack

    yield make
    for stack in stacks:
        stack.frontend.stop()
        stack.stop_all_workers()
        if stack.redis is not None:
            stack.redis.stop()  # after the workers (its own fixture would stop it before them)
        stack.db.dispose()


@pytest.fixture
def chaos_profile() -> P.Profile:
    return P.current()
