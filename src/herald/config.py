"""Settings: read once at start from a TOML file and ``HERALD_<KEY>`` environment overrides.

The result is one immutable :class:`Settings` object that is passed down; nothing in herald reads the
environment after start. A bad value raises :class:`ConfigError` whose message names the key, the value and
what is allowed, so the CLI can stop with one clear line.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import os
import re
import secrets
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "AsyncEmails",
    "ConfigError",
    "DispatchMode",
    "RateLimit",
    "Settings",
    "check_secrets",
    "configured_keys",
    "ensure_secrets",
    "load_settings",
    "parse_async_emails",
    "parse_duration",
    "parse_rate_limit",
    "secret_problems",
    "secure_data_dir",
]

ENV_PREFIX = "HERALD_"
CONFIG_ENV = "HERALD_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")
SMTP_SECURITY = ("none", "starttls", "tls")
QUEUE_BACKENDS = ("redis", "sql")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range."""


class DispatchMode(enum.StrEnum):
    """How one project's notifications are delivered, as ``async_emails`` decides."""

    INLINE = "inline"
    ASYNC = "async"


@dataclass(frozen=True)
class AsyncEmails:
    """Which projects send their notifications through the backend workers.

    ``all`` wins over ``projects``; neither means every project notifies inline.
    """

    all: bool = False
    projects: frozenset[int] = frozenset()

    def applies_to(self, project_id: int) -> bool:
        return self.all or project_id in self.projects

    @property
    def enabled(self) -> bool:
        return self.all or bool(self.projects)

    def __str__(self) -> str:
        if self.all:
            return "all"
        if self.projects:
            return ",".join(str(p) for p in sorted(self.projects))
        return "false"


def parse_async_emails(value: object) -> AsyncEmails:
    """Parse ``async_emails``: ``false``, ``"all"`` or ``"X,Y,Z"`` (project ids), nothing else.

    Values such as ``"0"``, ``"yes"``, ``"1,a"`` or ``"1,,2"`` are errors rather than a guess, because a
    wrong guess either floods the request path with mail or silently moves projects to the workers.
    """
    allowed = 'false, "all" or a comma-separated list of project ids such as "101,102"'
    if value is False:
        return AsyncEmails()
    if not isinstance(value, str):
        raise ConfigError(f"async_emails = {value!r} is not allowed: use {allowed}")
    text = value.strip()
    if text.lower() == "false":
        return AsyncEmails()
    if text == "all":
        return AsyncEmails(all=True)
    parts = text.split(",")
    ids: set[int] = set()
    for part in parts:
        part = part.strip()
        if not part.isascii() or not part.isdigit() or int(part) <= 0:
            raise ConfigError(f"async_emails = {value!r} is not allowed: use {allowed}")
        ids.add(int(part))
    return AsyncEmails(projects=frozenset(ids))


@dataclass(frozen=True)
class RateLimit:
    """``smtp_rate_limit``: at most ``count`` sends per ``period`` seconds, across a host's workers."""

    count: int
    period: float

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "hour"}.get(self.period, f"{self.period:g}s")
        return f"{self.count}/{unit}"


_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_rate_limit(value: object) -> RateLimit | None:
    """Parse ``smtp_rate_limit``: ``"30/min"``, ``"5/s"``, ``"1000/hour"``; ``""``/``"none"``/false: none."""
    allowed = 'a count per unit such as "30/min", "5/s" or "1000/hour", or "none"'
    if value is False or value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"smtp_rate_limit = {value!r} is not allowed: use {allowed}")
    text = value.strip().lower()
    if text in ("", "none", "false"):
        return None
    count, _, unit = text.partition("/")
    count, unit = count.strip(), unit.strip()
    if not (count.isascii() and count.isdigit()) or int(count) < 1 or unit not in _RATE_UNITS:
        raise ConfigError(f"smtp_rate_limit = {value!r} is not allowed: use {allowed}")
    return RateLimit(int(count), _RATE_UNITS[unit])


def parse_duration(key: str, value: object, lo: float, hi: float) -> float:
    """Seconds, from a number or a string such as ``"90s"``, ``"30m"``, ``"12h"``, ``"5d"``."""
    allowed = f'seconds, or a number with s, m, h or d such as "5d" (from {lo:g} s to {hi:g} s)'
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        factor = _DURATION_UNITS.get(text[-1:]) if text else None
        number = text[:-1] if factor is not None else text
        try:
            seconds = float(number) * (factor or 1.0)
        except ValueError:
            seconds = None
    if seconds is None or seconds != seconds or not lo <= seconds <= hi:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")
    return seconds


@dataclass(frozen=True, repr=False)
class Settings:
    """Every setting herald reads, validated. Build it with :func:`load_settings`."""

    data_dir: Path = Path("./var")
    database_url: str = ""
    base_url: str = "http://127.0.0.1:8080"
    admin_token: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    mail_domain: str = ""
    mail_from_name: str = "herald"
    smtp_host: str | None = None
    smtp_port: int = 0
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_security: str = "none"
    smtp_timeout: float = 30.0
    smtp_ca_file: Path | None = None
    async_emails: AsyncEmails = AsyncEmails()
    nb_backend_workers: int = 2
    queue_backend: str = ""
    redis_server: str | None = None
    redis_port: int = 6379
    redis_user: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    redis_tls: bool = False
    redis_ca_file: Path | None = None
    redis_namespace: str = "herald"
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    redis_sentinel_password: str | None = field(default=None, repr=False)
    redis_cluster: bool = False
    queue_shards: int = 4
    logger_level: str = "info"
    log_dir: Path = Path()
    stale_after_seconds: int = 120
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    job_max_attempts: int = 10
    lease_seconds: float = 30.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    delivery_max_age: float = 5 * 24 * 3600.0
    worker_grace_seconds: float = 30.0
    worker_concurrency: int = 32
    inline_max_recipients: int = 200
    smtp_max_connections: int = 64
    smtp_rate_limit: RateLimit | None = None
    # admin console sessions
    admin_session_seconds: float = 8 * 3600.0
    admin_session_idle_seconds: float = 3600.0
    # --- logs (issue 8): one JSON object per line for log shippers; log_dir = "-" logs to stderr only.
    log_format: str = "text"
    # --- many hosts (issue 10) ---
    node_name: str = ""

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "herald.db"

    @property
    def redis_configured(self) -> bool:
        return bool(self.redis_server or self.redis_url or self.redis_sentinels)

    @property
    def log_to_stderr(self) -> bool:
        """``log_dir = "-"``: every line to stderr, no log file (systemd's journal, containers)."""
        return str(self.log_dir) == "-"

    @property
    def mailbox_dir(self) -> Path:
        return self.data_dir / "mailbox"

    def redis_connection_url(self) -> str | None:
        """The URL redis-py should connect to, with credentials; never log it."""
        if self.redis_url:
            return self.redis_url
        if not self.redis_server:
            return None
        scheme = "rediss" if self.redis_tls else "redis"
        auth = ""
        if self.redis_password:
            from urllib.parse import quote

            user = quote(self.redis_user or "", safe="")
            auth = f"{user}:{quote(self.redis_password, safe='')}@"
        return f"{scheme}://{auth}{self.redis_server}:{self.redis_port}/0"

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self.redacted().items()) + ")"

    def redacted(self) -> dict[str, Any]:
        """The settings as plain values with every secret masked: safe for logs and ``herald doctor``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_KEYS and value:
                value = "********"
            elif f.name == "database_url":
                value = _redact_url(value)
            elif isinstance(value, Path | AsyncEmails | RateLimit):
                value = str(value)
            out[f.name] = value
        return out


_SECRET_KEYS = frozenset(
    {"admin_token", "secret_key", "smtp_password", "redis_password", "redis_url", "redis_sentinel_password"}
)


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@")
    return parts._replace(netloc=netloc).geturl()


# --- parsing -------------------------------------------------------------------------------------------


def _as_str(key: str, value: object) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{key} = {value!r} is not allowed: expected a string")


def _as_opt_str(key: str, value: object) -> str | None:
    text = _as_str(key, value).strip()
    return text or None


def _as_int(lo: int, hi: int) -> Callable[[str, object], int]:
    def parse(key: str, value: object) -> int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a whole number from {lo} to {hi}")
        if isinstance(value, str):
            text = value.strip()
            if not (text.isascii() and text.lstrip("-").isdigit()):
                raise ConfigError(
                    f"{key} = {value!r} is not allowed: expected a whole number from {lo} to {hi}"
                )
            value = int(text)
        if not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a whole number from {lo} to {hi}")
        return value

    return parse


def _as_float(lo: float, hi: float) -> Callable[[str, object], float]:
    def parse(key: str, value: object) -> float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a number from {lo} to {hi}")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(
                    f"{key} = {value!r} is not allowed: expected a number from {lo} to {hi}"
                ) from None
        if not isinstance(value, int | float) or not lo <= value <= hi:
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a number from {lo} to {hi}")
        return float(value)

    return parse


def _as_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{key} = {value!r} is not allowed: expected true or false")


def _one_of(choices: tuple[str, ...]) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        text = _as_str(key, value).strip().lower()
        if text not in choices:
            raise ConfigError(f"{key} = {value!r} is not allowed: expected one of {', '.join(choices)}")
        return text

    return parse


def _as_path(key: str, value: object) -> Path:
    text = _as_str(key, value).strip()
    if not text:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected a directory path")
    return Path(text)


def _as_http_url(key: str, value: object) -> str:
    text = _as_str(key, value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected an http:// or https:// URL")
    return text


def _as_database_url(key: str, value: object) -> str:
    text = _as_str(key, value).strip()
    scheme = text.split(":", 1)[0].split("+", 1)[0]
    if "://" not in text or scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(
            f"{key} = {_redact_url(text)!r} is not allowed: expected a sqlite:/// or postgresql:// URL"
        )
    if scheme == "postgres":
        text = "postgresql" + text[len("postgres") :]
    if text.startswith("postgresql://"):
        # psycopg 3 is the driver herald installs; plain postgresql:// would look for psycopg2.
        text = "postgresql+psycopg://" + text[len("postgresql://") :]
    return text


def _as_redis_url(key: str, value: object) -> str | None:
    text = _as_opt_str(key, value)
    if text is None:
        return None
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{key} = <hidden> is not allowed: expected a redis://, rediss:// or unix:// URL")
    return text


def _as_domain(key: str, value: object) -> str:
    text = _as_str(key, value).strip().lower()
    if text and not all(part and part.replace("-", "").isalnum() for part in text.split(".")):
        raise ConfigError(f"{key} = {value!r} is not allowed: expected a domain name such as example.org")
    return text


def _as_header_text(key: str, value: object) -> str:
    text = _as_str(key, value)
    if any(ch in text for ch in "\r\n\0") or len(text) > 100:
        raise ConfigError(f"{key} = {value!r} is not allowed: one line of at most 100 characters")
    return text.strip()


def _as_namespace(key: str, value: object) -> str:
    text = _as_str(key, value).strip()
    # The namespace sits inside the {hash tag} of every key: braces would break it (and Redis Cluster).
    if not text or len(text) > 64 or not all(ch.isalnum() or ch in "._:-" for ch in text):
        raise ConfigError(
            f"{key} = {value!r} is not allowed: 1-64 letters, digits, '.', '_', ':' or '-' (no braces)"
        )
    return text


def _as_host_ports(key: str, value: object) -> str | None:
    text = _as_opt_str(key, value)
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    for part in parts:
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{key} = {value!r} is not allowed: expected host:port,host:port")
    if not parts:
        return None
    return ",".join(parts)


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")


def _as_node_name(key: str, value: object) -> str:
    """This host's name among the hosts of one deployment: it prefixes every heartbeat, queue consumer and
    lock holder, so it must be unique per host (two containers may share a hostname)."""
    text = _as_str(key, value).strip()
    if text and not _NODE_NAME.fullmatch(text):  # empty: the hostname (see _complete)
        raise ConfigError(
            f"{key} = {text!r}: use 1 to 48 letters, digits, '.', '_' or '-' (no ':'), starting with a "
            "letter or digit"
        )
    return text


def _as_async(key: str, value: object) -> AsyncEmails:
    return parse_async_emails(value)


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "data_dir": _as_path,
    "database_url": _as_database_url,
    "base_url": _as_http_url,
    "admin_token": _as_opt_str,
    "secret_key": _as_opt_str,
    "mail_domain": _as_domain,
    "mail_from_name": _as_header_text,
    "smtp_host": _as_opt_str,
    "smtp_port": _as_int(0, 65535),
    "smtp_user": _as_opt_str,
    "smtp_password": _as_opt_str,
    "smtp_security": _one_of(SMTP_SECURITY),
    "smtp_timeout": _as_float(0.1, 600),
    "smtp_ca_file": _as_path,
    "async_emails": _as_async,
    "nb_backend_workers": _as_int(0, 64),
    "queue_backend": _one_of(QUEUE_BACKENDS),
    "redis_server": _as_opt_str,
    "redis_port": _as_int(1, 65535),
    "redis_user": _as_opt_str,
    "redis_password": _as_opt_str,
    "redis_url": _as_redis_url,
    "redis_tls": _as_bool,
    "redis_ca_file": _as_path,
    "redis_namespace": _as_namespace,
    "redis_sentinels": lambda key, value: _as_host_ports(key, value),
    "redis_sentinel_master": _as_opt_str,
    "redis_sentinel_password": _as_opt_str,
    "redis_cluster": _as_bool,
    "queue_shards": _as_int(1, 64),
    "logger_level": _one_of(LOG_LEVELS),
    "log_dir": _as_path,
    "stale_after_seconds": _as_int(1, 7 * 24 * 3600),
    "http_host": _as_str,
    "http_port": _as_int(0, 65535),
    "job_max_attempts": _as_int(1, 1000),
    "lease_seconds": _as_float(0.5, 3600),
    "retry_base_seconds": _as_float(0.01, 3600),
    "retry_max_seconds": _as_float(0.01, 7 * 24 * 3600),
    "delivery_max_age": lambda key, value: parse_duration(key, value, 1.0, 60 * 24 * 3600.0),
    "worker_grace_seconds": _as_float(0, 3600),
    "worker_concurrency": _as_int(1, 1024),
    "inline_max_recipients": _as_int(1, 1_000_000),
    "smtp_max_connections": _as_int(1, 1024),
    "smtp_rate_limit": lambda _key, value: parse_rate_limit(value),
    # admin console sessions
    "admin_session_seconds": lambda key, value: parse_duration(key, value, 60.0, 30 * 24 * 3600.0),
    "admin_session_idle_seconds": lambda key, value: parse_duration(key, value, 60.0, 30 * 24 * 3600.0),
    # --- logs (issue 8)
    "log_format": _one_of(LOG_FORMATS),
    # --- many hosts (issue 10) ---
    "node_name": _as_node_name,
}

KEYS: tuple[str, ...] = tuple(_PARSERS)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    # Accept a [herald] table as well as top-level keys, so herald can share a file with other tools.
    if set(data) == {"herald"} and isinstance(data["herald"], dict):
        data = data["herald"]
    return data


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file (or ``HERALD_CONFIG``) and ``HERALD_<KEY>`` overrides.

    Environment values win over the file. Unknown keys in either are errors.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    if path is not None:
        for key, value in _read_file(Path(path)).items():
            if key not in _PARSERS:
                raise ConfigError(f"unknown key {key!r} in {str(path)!r}{_did_you_mean(key)}")
            raw[key] = value
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _PARSERS:
            raise ConfigError(f"unknown environment variable {name}{_did_you_mean(key, ENV_PREFIX)}")
        raw[key] = value
    values = {key: _PARSERS[key](key, value) for key, value in raw.items()}
    return _complete(values)


def _did_you_mean(key: str, prefix: str = "") -> str:
    """The nearest known key as a hint, or where the list is: never all the keys in one line."""
    close = difflib.get_close_matches(str(key).lower(), KEYS, n=1, cutoff=0.6)
    if close:
        name = f"{prefix}{close[0]}".upper() if prefix else repr(close[0])
        return f" — did you mean {name}?"
    return " (docs/configuration.md lists every key)"


def configured_keys(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The keys the file (or ``HERALD_CONFIG``) or ``HERALD_<KEY>`` set, as opposed to defaults.

    The CLI uses it to tell an explicit ``base_url`` from the default one that ``--port`` may move. Call it
    after :func:`load_settings` succeeded: it does not validate.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    keys = set(_read_file(Path(path))) if path is not None else set()
    keys.update(
        name[len(ENV_PREFIX) :].lower() for name in env if name.startswith(ENV_PREFIX) and name != CONFIG_ENV
    )
    return frozenset(keys & set(KEYS))


def default_node_name() -> str:
    """The machine's hostname, cut to what ``node_name`` accepts (``_`` for anything else)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()).lstrip("._-")[:48]
    return name or "localhost"


def _complete(values: dict[str, Any]) -> Settings:
    """Fill the defaults that depend on other keys, then check the keys against each other."""
    data_dir: Path = values.setdefault("data_dir", Path("./var"))
    values.setdefault("database_url", f"sqlite:///{data_dir / 'herald.db'}")
    values.setdefault("log_dir", data_dir / "log")
    if not values.get("node_name"):
        values["node_name"] = default_node_name()
    base_url = values.setdefault("base_url", "http://127.0.0.1:8080")
    if not values.get("mail_domain"):
        values["mail_domain"] = urlsplit(base_url).hostname or "localhost"
    security = values.get("smtp_security", "none")
    if not values.get("smtp_port"):
        values["smtp_port"] = {"none": 25, "starttls": 587, "tls": 465}[security]
    redis_configured = bool(
        values.get("redis_server") or values.get("redis_url") or values.get("redis_sentinels")
    )
    backend = values.get("queue_backend") or ("redis" if redis_configured else "sql")
    if backend == "redis" and not redis_configured:
        raise ConfigError("queue_backend = 'redis' needs redis_server, redis_url or redis_sentinels")
    _check_redis_topology(values)
    values["queue_backend"] = backend
    if values.get("redis_user") and not values.get("redis_password"):
        raise ConfigError("redis_user is set without redis_password: an ACL user needs its password")
    if backend == "redis":
        _check_redis_password(values)
    if values.get("smtp_user") and not values.get("smtp_password"):
        raise ConfigError("smtp_user is set without smtp_password")
    host = values.get("smtp_host")
    if values.get("smtp_user") and security == "none" and host and not _is_loopback(host):
        raise ConfigError(
            f"smtp_user is set with smtp_security = 'none' for {host!r}: the password would cross the "
            "network in clear; use starttls or tls"
        )
    for key in ("smtp_ca_file", "redis_ca_file"):
        if values.get(key) and not Path(values[key]).is_file():
            raise ConfigError(f"{key} = {str(values[key])!r} is not a readable file")
    retry_base = values.get("retry_base_seconds", 2.0)
    if values.get("retry_max_seconds", 600.0) < retry_base:
        raise ConfigError("retry_max_seconds must not be smaller than retry_base_seconds")
    return Settings(**values)


def _check_redis_topology(values: dict[str, Any]) -> None:
    """Sentinel needs its master's name, and is not Cluster (Cluster fails over by itself)."""
    if values.get("redis_sentinels") and not values.get("redis_sentinel_master"):
        raise ConfigError(
            "redis_sentinels is set without redis_sentinel_master (the name the sentinels watch)"
        )
    if values.get("redis_sentinel_master") and not values.get("redis_sentinels"):
        raise ConfigError("redis_sentinel_master is set without redis_sentinels (host:port,host:port)")
    if values.get("redis_sentinels") and values.get("redis_cluster"):
        raise ConfigError(
            "redis_sentinels and redis_cluster are both set: Cluster fails over without Sentinel"
        )


def _check_redis_password(values: dict[str, Any]) -> None:
    """A Redis reachable from the network must require a password; loopback may go without."""
    if values.get("redis_sentinels"):
        hosts = [part.rpartition(":")[0] for part in values["redis_sentinels"].split(",")]
        if not values.get("redis_password") and not all(_is_loopback(h.strip("[]")) for h in hosts):
            raise ConfigError(
                "redis_sentinels are not on loopback: set redis_password (the masters' and replicas' "
                "password); a Redis reachable from the network must require one"
            )
        return
    if values.get("redis_url"):
        parts = urlsplit(values["redis_url"])
        host, has_password = parts.hostname or "", bool(parts.password)
        if parts.scheme == "unix":
            return
    else:
        host, has_password = values["redis_server"], bool(values.get("redis_password"))
    if not has_password and not _is_loopback(host):
        raise ConfigError(
            f"redis server {host!r} is not on loopback: set redis_password (or a password in redis_url); "
            "a Redis reachable from the network must require one"
        )


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


MIN_SECRET_LENGTH = 32
_CHECKED_SECRETS = ("admin_token", "secret_key")


def secret_problems(settings: Settings) -> list[str]:
    """What is wrong with the admin token and the secret key, one line each (empty: nothing).

    A short admin token can be guessed over HTTP; a short secret key lets anyone forge unsubscribe links
    and admin session cookies. Generated secrets are 43 characters.
    """
    problems = []
    for key in _CHECKED_SECRETS:
        value = getattr(settings, key)
        if value is not None and len(value) < MIN_SECRET_LENGTH:
            problems.append(
                f"{key} is {len(value)} characters, fewer than {MIN_SECRET_LENGTH}: set a longer one "
                f"(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))') or remove it to have "
                f"one generated into data_dir"
            )
    return problems


def check_secrets(settings: Settings) -> Settings:
    """Raise :class:`ConfigError` naming each secret that is too weak; return ``settings`` otherwise."""
    problems = secret_problems(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    return settings


PRIVATE_UMASK = 0o077


def secure_data_dir(settings: Settings) -> None:
    """Make every file herald creates from now on private to its user, and create ``data_dir`` and
    ``log_dir`` mode 0700.

    The database, the logs and the Maildir hold private comments and unsubscribe tokens, so they are
    0600 in a 0700 directory (the umask covers SQLite, log and mailbox files alike). A directory that
    already exists keeps its mode, which is the operator's to choose; ``herald doctor`` warns if others
    can read it. Call once at process start, before anything opens a file (the CLI does).
    """
    os.umask(PRIVATE_UMASK)
    for path in (settings.data_dir, settings.log_dir):
        if str(path) != "-":  # log_dir = "-": stderr, no directory
            Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)


def _secret_file(path: Path) -> str:
    """Read a generated secret, creating it (mode 0600) on first start; safe if two processes race."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process (a worker started alongside the web) created it first: use theirs.
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def ensure_secrets(settings: Settings) -> Settings:
    """Fill ``admin_token`` and ``secret_key`` from ``data_dir`` (generated there on first start), then
    refuse either if it is weak (:func:`check_secrets`): a :class:`ConfigError` names the key."""
    changes: dict[str, str] = {}
    if not settings.admin_token:
        changes["admin_token"] = _secret_file(settings.data_dir / "admin_token")
    if not settings.secret_key:
        changes["secret_key"] = _secret_file(settings.data_dir / "secret_key")
    return check_secrets(dataclasses.replace(settings, **changes) if changes else settings)
