"""Fixtures of the many-hosts tests: PgBouncer, network namespaces, several front ends."""

from tests.e2e.conftest import make_stack  # noqa: F401  (the e2e stack, reused here)
from tests.support.netns import namespaces  # noqa: F401
from tests.support.pgbouncer import pgbouncer_url  # noqa: F401
