"""Loading a changeset: a fixed number of queries, a snapshot that matches the artifact, missing ids."""

from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import event

from herald.notify import compute_recipients, plan_notification
from herald.notify.context import load_context
from herald.tracker.models import Artifact
from tests.notify.conftest import SECRET, World


@contextmanager
def counting(engine):
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _planned_queries(world: World, followers: int) -> tuple[int, int]:
    s = world.scene
    cs = s.create("alice", world.bugs, comment="hello")
    art = s.artifact_of(cs)
    for i in range(followers):
        name = f"f{followers}x{i}"
        s.user(name, language="fr" if i % 2 else "en")
        s.follow(name, art)
    update = s.update("alice", art, status="Fixed", comment="fixed")
    with counting(s.db.engine) as statements, s.db.session() as session:
        plan = plan_notification(session, s.settings, update, SECRET)
    return plan.recipients, len([q for q in statements if q.lstrip().upper().startswith("SELECT")])


def test_query_count_does_not_grow_with_recipients(world):
    few, few_queries = _planned_queries(world, 3)
    many, many_queries = _planned_queries(world, 40)
    assert (few, many) == (3, 40)
    assert few_queries == many_queries <= 12


def test_snapshot_of_the_latest_changeset_is_the_artifact(world):
    s = world.scene
    cs = s.create("alice", world.bugs, status="Open", cc=["bob"], description="x\ny", severity=2)
    art = s.artifact_of(cs)
    s.update("alice", art, status="Fixed", severity=None)
    s.update("bob", art, cc=["bob", "dave"], internal_notes="n")
    last = s.update("alice", art, title="Renamed", comment="done")
    with s.db.session() as session:
        ctx = load_context(session, last)
        stored = session.get(Artifact, art).values
        assert ctx.values == {int(k): v for k, v in stored.items()}


def test_missing_changeset(world):
    with world.scene.db.session() as session:
        assert plan_notification(session, world.scene.settings, 424242, SECRET) is None
        assert compute_recipients(session, 424242) == []
