"""Shared fixtures. Each real service has its own plugin module under tests/support/."""

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.smtp",
    "tests.support.tracker",
]
