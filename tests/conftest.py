"""Shared fixtures. Each real service has its own plugin module under tests/support/."""

import os

from hypothesis import settings

# CI runs with a fixed seed (derandomize) so a red run can be replayed; locally hypothesis explores.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.redis_server",
    "tests.support.redis_ha",
    "tests.support.smtp",
    "tests.support.tracker",
    "tests.support.beds",
]
