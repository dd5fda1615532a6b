"""The systems under comparison, each driven only through its own public face.

herald: ``herald serve`` (uvicorn) and ``herald workers`` started from a TOML config file, changes made with
``PATCH /api/artifacts/{id}`` over HTTP. The peers (Celery, Dramatiq, huey, RQ): their worker command lines,
changes enqueued with their own API by ``bench/peers/driver.py``, all inside ``bench/.venv-peers``.

Every process is started in its own session (process group) so that ``stop`` ends it and its children.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
PEERS_VENV = BENCH / ".venv-peers"
HERALD_RECIPIENTS = ("bob@example.org", "carol@example.org", "dave@example.org")


@dataclass
class Load:
    """The changes one enqueue call made: their ids, and the enqueue stamp of each when the harness keeps
    it (herald: the start of the HTTP request; the peers carry it in a header)."""

    ids: set[int] = field(default_factory=set)
    stamps: dict[int, float] = field(default_factory=dict)
    first: float = 0.0
    last: float = 0.0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failed enqueues by HTTP status or exception


class Group:
    """A process in its own session; ``stop`` signals the whole group."""

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: Path | None = None, log: Path | None = None
    ):
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._out = out
        self.argv = argv
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 20) -> None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                # the leader is gone; children left in the group (e.g. a pool) get the same signal
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        if self._out is not subprocess.DEVNULL:
            self._out.close()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        pass
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def worker_children(pid: int, want: int = 2, timeout: float = 30) -> list[int]:
    """The job-running children of a master process, once ``want`` of them exist (helper processes of
    multiprocessing are left out)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in children(pid) if "resource_tracker" not in cmdline(c)]
        if len(found) >= want or time.monotonic() > deadline:
            return found[:want]
        time.sleep(0.05)


class System(abc.ABC):
    name = ""

    @abc.abstractmethod
    def settings(self) -> str: ...

    @abc.abstractmethod
    def prepare(
        self, run_dir: Path, redis_url: str, redis_port: int, redis_password: str, smtp_port: int
    ): ...

    @abc.abstractmethod
    def enqueue(self, start: int, count: int, rate: float) -> Load: ...

    @abc.abstractmethod
    def start_workers(self) -> None: ...

    @abc.abstractmethod
    def job_processes(self) -> list[int]: ...

    @abc.abstractmethod
    def stop(self) -> None: ...


# --- the peers ----------------------------------------------------------------------------------------


PEER_COMMANDS = {
    "celery": [["celery", "-A", "celery_app", "worker", "--pool", "prefork", "--concurrency", "2",
                "--loglevel", "WARNING"]],
    "dramatiq": [["dramatiq", "dramatiq_app", "--processes", "2", "--threads", "8"]],
    "huey": [["huey_consumer", "huey_app.huey", "--worker-type", "process", "--workers", "2"]],
    "rq": [["rq", "worker", "--url", "{redis_url}", "--quiet", "default"]] * 2,
}  # fmt: skip
PEER_SETTINGS = {
    "celery": "prefork pool, 2 processes, default early ack and prefetch multiplier 4",
    "dramatiq": "2 processes x 8 threads (its default threads), default middleware and retries",
    "huey": "consumer with 2 process workers, RedisHuey blocking pop",
    "rq": "2 `rq worker` processes, each forking a work horse per job",
}


class Peer(System):
    def __init__(self, name: str, versions: dict[str, str]) -> None:
        self.name = name
        self.version = versions.get(name, "?")
        self.groups: list[Group] = []
        self.env: dict[str, str] = {}
        self.log: Path | None = None

    def settings(self) -> str:
        commands = " ; ".join(" ".join(c) for c in PEER_COMMANDS[self.name])
        return (
            f"{self.name} {self.version}: {PEER_SETTINGS[self.name]}; Redis broker; job = build 3 "
            f"EmailMessage and send them with smtplib over one connection per job; `{commands}`"
        )

    def prepare(self, run_dir, redis_url, redis_port, redis_password, smtp_port):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("HERALD_", "VIRTUAL_ENV"))}
        self.env = {
            **clean,
            "PATH": f"{PEERS_VENV / 'bin'}:{clean.get('PATH', '')}",
            "PYTHONPATH": str(PEERS),
            "BENCH_REDIS_URL": redis_url,
            "BENCH_SMTP_PORT": str(smtp_port),
        }
        self.redis_url = redis_url
        self.log = run_dir / f"{self.name}.log"

    def enqueue(self, start, count, rate):
        argv = [str(PEERS_VENV / "bin" / "python"), str(PEERS / "driver.py"), self.name,
                "--start", str(start), "--count", str(count)]  # fmt: skip
        if rate:
            argv += ["--rate", str(rate)]
        out = subprocess.run(argv, env=self.env, cwd=PEERS, capture_output=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{self.name} driver failed: {out.stderr.decode()[-2000:]}")
        result = json.loads(out.stdout.decode().strip().splitlines()[-1])
        return Load(ids=set(range(start, start + count)), first=result["first"], last=result["last"])

    def start_workers(self):
        for command in PEER_COMMANDS[self.name]:
            argv = [c.format(redis_url=self.redis_url) for c in command]
            argv[0] = str(PEERS_VENV / "bin" / argv[0])
            self.groups.append(Group(argv, self.env, cwd=PEERS, log=self.log))

    def job_processes(self):
        if self.name == "rq":  # the two worker processes themselves (a kill takes the group: its horse too)
            return [g.pid for g in self.groups]
        return worker_children(self.groups[0].pid)

    def kill_job_process(self, pid: int) -> None:
        if self.name == "rq":
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)

    def stop(self):
        for group in self.groups:
            group.stop()
        self.groups = []


# --- herald -------------------------------------------------------------------------------------------


class Herald(System):
    """herald as a user runs it: a config file, ``herald serve``, ``herald workers``, the HTTP API."""

    name = "herald"

    def __init__(self, template: Path, token: str, artifacts: list[int], database: str | None,
                 extra: dict[str, str], python: str, clients: int = 16) -> None:  # fmt: skip
        self.template = template
        self.token = token
        self.artifacts = artifacts
        self.database = database  # a per-run PostgreSQL URL is made by the caller; None: SQLite copy
        self.extra = extra
        self.clients = clients
        self.python = python  # the interpreter that runs ``-m herald`` (another checkout's venv works too)
        self.serve: Group | None = None
        self.workers: Group | None = None
        self.next_artifact = 0

    def settings(self) -> str:
        extra = ", ".join(f"{k} = {v}" for k, v in self.extra.items()) or "none"
        return (
            f"herald {_herald_version(self.python)} ({self.python}): `herald serve` (uvicorn, 1 process)"
            " + `herald workers` with "
            f'nb_backend_workers = 2, async_emails = "all", Redis queue (redis_server/redis_port/'
            f"redis_password), tracker DB {'PostgreSQL' if self.database else 'SQLite'}; other keys at "
            f"their defaults; extra keys: {extra}; changes through PATCH /api/artifacts/{{id}} "
            f"({self.clients} HTTP client threads, keep-alive)"
        )

    def prepare(self, run_dir, redis_url, redis_port, redis_password, smtp_port):
        data = run_dir / "herald"
        shutil.copytree(self.template, data)
        self.port = _free_port()
        database = self.database or f"sqlite:///{data / 'herald.db'}"
        lines = {
            "data_dir": str(data), "log_dir": str(data / "log"), "database_url": database,
            "http_host": "127.0.0.1", "http_port": self.port,
            "smtp_host": "127.0.0.1", "smtp_port": smtp_port,
            "async_emails": "all", "nb_backend_workers": 2,
            "queue_backend": "redis", "redis_server": "127.0.0.1", "redis_port": redis_port,
        }  # fmt: skip
        config = run_dir / "herald.toml"
        config.write_text(
            "".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items())
            + "".join(f"{k} = {v}\n" for k, v in self.extra.items())
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        self.env = {**clean, "HERALD_CONFIG": str(config), "HERALD_REDIS_PASSWORD": redis_password}
        self.log = run_dir / "herald.out"
        self.serve = Group([self.python, "-m", "herald", "serve"], self.env, log=self.log)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.serve.process.poll() is not None:
                    raise SystemExit(f"herald serve did not start, see {self.log}") from None
                time.sleep(0.05)

    def enqueue(self, start, count, rate):
        """``count`` PATCHes, open loop at ``rate``/s (as fast as the clients go without); ``start`` is
        unused (herald numbers its changesets)."""
        load = Load()
        lock = threading.Lock()
        local = threading.local()
        url = f"http://127.0.0.1:{self.port}/api/artifacts/"
        headers = {"Authorization": f"Bearer {self.token}"}
        clients: list[httpx.Client] = []

        def one(artifact: int, n: int) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(timeout=60)
                with lock:
                    clients.append(local.client)
            t = time.time()
            try:
                r = local.client.patch(url + str(artifact), json={"values": {"description": f"bench {n}"}},
                                       headers=headers)  # fmt: skip
                ok, why = r.status_code == 200, f"HTTP {r.status_code}"
            except httpx.TransportError as e:
                ok, why = False, type(e).__name__
            with lock:
                if ok:
                    cs = r.json()["changeset_id"]
                    load.ids.add(cs)
                    load.stamps[cs] = t
                else:
                    load.failed += 1
                    load.errors[why] = load.errors.get(why, 0) + 1

        t0 = time.monotonic()
        load.first = time.time()
        with ThreadPoolExecutor(self.clients) as pool:
            for i in range(count):
                if rate:
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                pool.submit(one, self.artifacts[self.next_artifact % len(self.artifacts)], i)
                self.next_artifact += 1
        load.last = time.time()
        for client in clients:
            client.close()
        return load

    def start_workers(self):
        self.workers = Group([self.python, "-m", "herald", "workers"], self.env, log=self.log)

    def job_processes(self):
        assert self.workers is not None
        return worker_children(self.workers.pid)

    def kill_job_process(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def stop(self):
        for group in (self.workers, self.serve):
            if group is not None:
                group.stop(timeout=30)
        self.workers = self.serve = None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _herald_version(python: str) -> str:
    code = "from importlib.metadata import version; print(version('herald'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def peer_versions() -> dict[str, str]:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit("no peers' virtualenv: run  sh bench/peers/setup.sh  first")
    code = (
        "import json; from importlib.metadata import version as v; "
        "print(json.dumps({p: v(p) for p in ('celery', 'dramatiq', 'huey', 'rq', 'redis')}))"
    )
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, check=True).stdout)
