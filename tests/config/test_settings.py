"""Configuration: TOML + HERALD_<KEY> overrides, validated once, one clear line per mistake."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.config import (
    AsyncEmails,
    ConfigError,
    Settings,
    ensure_secrets,
    load_settings,
    parse_async_emails,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "herald.toml"
    path.write_text(text)
    return path


def test_defaults_need_nothing():
    s = load_settings(env={})
    assert s.queue_backend == "sql"
    assert s.database_url == "sqlite:///var/herald.db"
    assert s.log_dir == Path("var/log")
    assert s.async_emails == AsyncEmails()
    assert s.nb_backend_workers == 2
    assert s.stale_after_seconds == 120
    assert s.mail_domain == "127.0.0.1"
    assert s.smtp_port == 25


def test_file_then_environment(tmp_path):
    path = write(
        tmp_path,
        'async_emails = "101,102"\nnb_backend_workers = 4\nredis_server = "127.0.0.1"\nsmtp_host = "mx"\n'
        'smtp_security = "starttls"\nbase_url = "https://tracker.example.org/"\n',
    )
    s = load_settings(path, env={"HERALD_NB_BACKEND_WORKERS": "3", "HERALD_LOGGER_LEVEL": "DEBUG"})
    assert s.async_emails.projects == {101, 102}
    assert s.async_emails.applies_to(101) and not s.async_emails.applies_to(7)
    assert s.nb_backend_workers == 3
    assert s.logger_level == "debug"
    assert s.queue_backend == "redis"
    assert s.smtp_port == 587
    assert s.base_url == "https://tracker.example.org"
    assert s.mail_domain == "tracker.example.org"


def test_herald_config_env_names_the_file(tmp_path):
    path = write(tmp_path, '[herald]\nasync_emails = "all"\n')
    assert load_settings(env={"HERALD_CONFIG": str(path)}).async_emails.all


@pytest.mark.parametrize("value", [False, "false", " false "])
def test_async_emails_off(value):
    assert not parse_async_emails(value).enabled


@pytest.mark.parametrize(
    "value", ["0", "yes", "1,a", "1,,2", "", "ALL", "true", True, 1, "-1", "1;2", "\u0661"]
)
def test_async_emails_rejects_everything_else(value):
    with pytest.raises(ConfigError) as err:
        parse_async_emails(value)
    assert "async_emails" in str(err.value) and '"all"' in str(err.value)


@given(st.sets(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=20))
def test_async_emails_lists_round_trip(ids):
    parsed = parse_async_emails(",".join(str(i) for i in ids))
    assert parsed.projects == ids
    assert parse_async_emails(str(parsed)) == parsed


@given(st.text(max_size=20))
def test_async_emails_never_guesses(text):
    try:
        parsed = parse_async_emails(text)
    except ConfigError:
        return
    stripped = text.strip()
    is_list = all(p.strip().isdigit() for p in stripped.split(","))
    assert stripped.lower() == "false" or stripped == "all" or is_list
    assert parsed.all == (stripped == "all")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"HERALD_NB_BACKEND_WORKERS": "many"}, "nb_backend_workers = 'many'"),
        ({"HERALD_NB_BACKEND_WORKERS": "-1"}, "from 0 to 64"),
        ({"HERALD_LOGGER_LEVEL": "verbose"}, "debug, info, warning, error"),
        ({"HERALD_SMTP_SECURITY": "ssl"}, "none, starttls, tls"),
        ({"HERALD_BASE_URL": "ftp://x"}, "http:// or https://"),
        ({"HERALD_DATABASE_URL": "mysql://x/y"}, "sqlite:/// or postgresql://"),
        ({"HERALD_REDIS_TLS": "maybe"}, "true or false"),
        ({"HERALD_QUEUE_BACKEND": "redis"}, "needs redis_server"),
        ({"HERALD_REDIS_SERVER": "10.0.0.5"}, "not on loopback"),
        ({"HERALD_REDIS_URL": "redis://redis.internal:6379/0"}, "not on loopback"),
        ({"HERALD_REDIS_USER": "herald"}, "redis_user is set without"),
        ({"HERALD_MAIL_FROM_NAME": "a\r\nBcc: x"}, "one line"),
        (
            {"HERALD_SMTP_HOST": "mx.example.org", "HERALD_SMTP_USER": "u", "HERALD_SMTP_PASSWORD": "p"},
            "in clear",
        ),
        ({"HERALD_SMTP_CA_FILE": "/nonexistent/ca.pem"}, "not a readable file"),
        ({"HERALD_REDIS_NAMESPACE": "a}b{c"}, "no braces"),
        ({"HERALD_NO_SUCH_KEY": "1"}, "unknown environment variable HERALD_NO_SUCH_KEY"),
        ({"HERALD_RETRY_BASE_SECONDS": "10", "HERALD_RETRY_MAX_SECONDS": "1"}, "retry_max_seconds"),
        ({"HERALD_REDIS_SENTINELS": "127.0.0.1:26379"}, "without redis_sentinel_master"),
        ({"HERALD_REDIS_SENTINEL_MASTER": "herald"}, "without redis_sentinels"),
        ({"HERALD_REDIS_SENTINELS": "s1:26379", "HERALD_REDIS_SENTINEL_MASTER": "m"}, "not on loopback"),
        ({"HERALD_REDIS_SENTINELS": "s1", "HERALD_REDIS_SENTINEL_MASTER": "m"}, "host:port,host:port"),
        (
            {
                "HERALD_REDIS_SENTINELS": "127.0.0.1:1",
                "HERALD_REDIS_SENTINEL_MASTER": "m",
                "HERALD_REDIS_CLUSTER": "true",
            },
            "Cluster fails over without Sentinel",
        ),
        ({"HERALD_QUEUE_SHARDS": "0"}, "from 1 to 64"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(env, fragment):
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_file_and_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "async_emails = [oops"), env={})
    with pytest.raises(ConfigError, match="unknown key 'asynch_emails'"):
        load_settings(write(tmp_path, 'asynch_emails = "all"'), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="nb_backend_workers"):
        load_settings(write(tmp_path, "nb_backend_workers = true"), env={})


def test_secrets_never_appear_in_repr_or_redacted_view():
    s = load_settings(
        env={
            "HERALD_REDIS_SERVER": "127.0.0.1",
            "HERALD_REDIS_PASSWORD": "redis-secret-123",
            "HERALD_SMTP_HOST": "mx",
            "HERALD_SMTP_USER": "u",
            "HERALD_SMTP_SECURITY": "starttls",
            "HERALD_SMTP_PASSWORD": "smtp-secret-456",
            "HERALD_ADMIN_TOKEN": "admin-secret-789",
            "HERALD_DATABASE_URL": "postgresql://herald:db-secret-000@db/herald",
        }
    )
    for text in (repr(s), str(s.redacted())):
        for secret in ("redis-secret-123", "smtp-secret-456", "admin-secret-789", "db-secret-000"):
            assert secret not in text
    assert s.database_url.startswith("postgresql+psycopg://")
    assert s.redis_connection_url() == "redis://:redis-secret-123@127.0.0.1:6379/0"


def test_sentinel_and_cluster_settings():
    s = load_settings(
        env={
            "HERALD_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26379",
            "HERALD_REDIS_SENTINEL_MASTER": "herald",
            "HERALD_REDIS_PASSWORD": "data-secret-1",
            "HERALD_REDIS_SENTINEL_PASSWORD": "sentinel-secret-2",
        }
    )
    assert s.queue_backend == "redis" and s.redis_sentinels == "10.0.0.1:26379,10.0.0.2:26379"
    assert "sentinel-secret-2" not in repr(s) and "data-secret-1" not in repr(s)
    assert s.queue_shards == 4
    c = load_settings(
        env={"HERALD_REDIS_SERVER": "127.0.0.1", "HERALD_REDIS_CLUSTER": "true", "HERALD_QUEUE_SHARDS": "6"}
    )
    assert c.redis_cluster and c.queue_shards == 6


def test_settings_are_immutable():
    s = Settings()
    with pytest.raises(AttributeError):
        s.nb_backend_workers = 5  # type: ignore[misc]


def test_secrets_are_generated_once_with_private_permissions(tmp_path):
    s = load_settings(env={"HERALD_DATA_DIR": str(tmp_path)})
    first = ensure_secrets(s)
    second = ensure_secrets(s)
    assert first.admin_token and first.admin_token == second.admin_token
    assert first.secret_key and first.secret_key != first.admin_token
    mode = stat.S_IMODE(os.stat(tmp_path / "admin_token").st_mode)
    assert mode == 0o600
    given_token = ensure_secrets(
        load_settings(env={"HERALD_DATA_DIR": str(tmp_path), "HERALD_ADMIN_TOKEN": "x" * 40})
    )
    assert given_token.admin_token == "x" * 40
