"""Real Redis high-availability deployments for tests: Sentinel (a master, a replica, three sentinels) and
Cluster (three masters, three replicas), on free loopback ports, with passwords, in private directories.

Each is started by its fixture and torn down after the test (every process it started, by its pid). Tests
may SIGKILL a node (``kill``) to cause a failover and wait for the deployment to heal (``wait_failover``).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from herald.config import Settings
from tests.support.services import free_port, service_missing

T = TypeVar("T")

STARTUP_SECONDS = 30.0
#: How long a master may be silent before its sentinels call it down.
DOWN_AFTER_MS = 1000
#: The same for cluster peers: longer, so that a loaded 2-core CI machine does not see false failures.
CLUSTER_NODE_TIMEOUT_MS = 3000


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        service_missing(
            f"{name} is not on PATH (Debian: apt install redis-server redis-sentinel redis-tools)"
        )
    assert path is not None
    return path


def _wait(check: object, what: str, timeout: float = STARTUP_SECONDS) -> None:
    """Poll ``check`` (servers starting up have no event to wait on from outside)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.exceptions.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _patiently(call: Callable[[], T], timeout: float = 30.0) -> T:
    """``call()``, again while the cluster says it is down (a node seen as failing for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Node:
    """One redis-server (or redis-sentinel) process."""

    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)
    directory: Path | None = None

    def start(self) -> None:
        assert self.directory is not None
        self.process = _spawn(self.argv, self.directory, self.name)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def answers(self, password: str) -> bool:
        """Whether the server answers PING; raises (with its log's end) if it has exited."""
        if not self.alive:
            assert self.directory is not None
            log = (self.directory / f"{self.name}.log").read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"{self.name} exited: " + " | ".join(log))
        with contextlib.closing(redis.Redis(port=self.port, password=password, socket_timeout=1)) as client:
            return bool(client.ping())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _spawn(argv: list[str], directory: Path, name: str) -> subprocess.Popen[bytes]:
    log = (directory / f"{name}.log").open("ab")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    finally:
        log.close()


def _server_argv(binary: str, port: int, password: str, directory: Path, *extra: str) -> list[str]:
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--requirepass", password,
        "--masterauth", password,
        "--appendonly", "yes",
        "--save", "",
        "--dir", str(directory),
        "--daemonize", "no",
        # Sync a new replica at once (the default waits 5 s for more replicas, and a master killed in that
        # window leaves a replica that never synced and so may not fail over).
        "--repl-diskless-sync-delay", "0",
        *extra,
    ]  # fmt: skip


@dataclass
class SentinelSet:
    """A master, its replica and three sentinels watching it under :attr:`master_name`."""

    directory: Path
    password: str = field(default_factory=lambda: secrets.token_hex(20))
    sentinel_password: str = field(default_factory=lambda: secrets.token_hex(20))
    master_name: str = "herald"
    servers: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    @property
    def sentinel_addresses(self) -> str:
        """The value of ``redis_sentinels``."""
        return ",".join(node.address for node in self.sentinels)

    def env(self) -> dict[str, str]:
        """herald's settings for this deployment, as environment variables."""
        return {
            "HERALD_REDIS_URL": "",
            "HERALD_REDIS_SENTINELS": self.sentinel_addresses,
            "HERALD_REDIS_SENTINEL_MASTER": self.master_name,
            "HERALD_REDIS_SENTINEL_PASSWORD": self.sentinel_password,
            "HERALD_REDIS_PASSWORD": self.password,
        }

    def settings(self, namespace: str) -> Settings:
        """herald's settings for a Redis queue on this deployment, under its own key ``namespace``."""
        return Settings(
            queue_backend="redis",
            redis_sentinels=self.sentinel_addresses,
            redis_sentinel_master=self.master_name,
            redis_sentinel_password=self.sentinel_password,
            redis_password=self.password,
            redis_namespace=namespace,
        )

    def start(self) -> None:
        server, sentinel = _binary("redis-server"), _binary("redis-sentinel")
        master_port = free_port()
        for i, port in enumerate((master_port, free_port())):
            node = Node(f"server-{i}", port)
            data = self.directory / node.name
            data.mkdir()
            extra = ["--replicaof", "127.0.0.1", str(master_port)] if i else []
            node.argv, node.directory = _server_argv(server, port, self.password, data, *extra), data
            node.start()
            self.servers.append(node)
        _wait(lambda: self._role(self.servers[1]) == ("slave", "up"), "the replica to sync")
        for i in range(3):
            node = Node(f"sentinel-{i}", free_port())
            data = self.directory / node.name
            data.mkdir()
            conf = data / "sentinel.conf"
            conf.write_text(
                f"port {node.port}\n"
                "bind 127.0.0.1\n"
                f"dir {data}\n"
                f"requirepass {self.sentinel_password}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {master_port} 2\n"
                f"sentinel auth-pass {self.master_name} {self.password}\n"
                f"sentinel down-after-milliseconds {self.master_name} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.master_name} 5000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            node.argv, node.directory = [sentinel, str(conf)], data
            node.start()
            self.sentinels.append(node)
        _wait(self._sentinels_ready, "the sentinels to see each other and the replica")

    def _role(self, node: Node) -> tuple[str, str]:
        client = redis.Redis(port=node.port, password=self.password, socket_timeout=1)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return str(info["role"]), str(info.get("master_link_status", "up"))

    def _sentinel_view(self, node: Node) -> dict[str, object]:
        client = redis.Redis(port=node.port, password=self.sentinel_password, socket_timeout=1)
        try:
            return client.sentinel_master(self.master_name)
        finally:
            client.close()

    def _sentinels_ready(self) -> bool:
        views = [self._sentinel_view(node) for node in self.sentinels]
        return all(v["num-other-sentinels"] == 2 and v["num-slaves"] == 1 for v in views)

    def master(self) -> Node:
        """The node the sentinels name as master now."""
        view = self._sentinel_view(next(n for n in self.sentinels if n.alive))
        return next(node for node in self.servers if node.port == int(view["port"]))  # type: ignore[call-overload]

    def client(self, node: Node) -> redis.Redis:
        return redis.Redis(port=node.port, password=self.password, socket_timeout=5)

    def kill_master(self) -> Node:
        """SIGKILL the master (no shutdown, no last AOF write) and return it."""
        master = self.master()
        master.stop(signal.SIGKILL)
        return master

    def wait_failover(self, old: Node, timeout: float = 30.0) -> Node:
        """Wait until the sentinels have promoted another node and it serves as master."""

        def promoted() -> bool:
            now = self.master()
            return now.port != old.port and self._role(now)[0] == "master"

        _wait(promoted, "the sentinels to promote the replica", timeout)
        return self.master()

    def restart(self, node: Node) -> None:
        """Start a killed server again; the sentinels turn it into a replica of the new master."""
        node.start()
        _wait(lambda: self._role(node) == ("slave", "up"), f"{node.name} to rejoin as a replica")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.stop()


@dataclass
class ClusterSet:
    """Three masters and three replicas in one Redis Cluster."""

    directory: Path
    password: str = field(default_factory=lambda: secrets.token_hex(20))
    nodes: list[Node] = field(default_factory=list)

    def url(self, node: Node | None = None) -> str:
        node = node or next(n for n in self.nodes if n.alive)
        return f"redis://:{self.password}@127.0.0.1:{node.port}/0"

    def env(self) -> dict[str, str]:
        """herald's settings for this deployment, as environment variables (any node names the cluster)."""
        return {"HERALD_REDIS_URL": self.url(), "HERALD_REDIS_CLUSTER": "true"}

    def start(self) -> None:
        server, cli = _binary("redis-server"), _binary("redis-cli")
        for i in range(6):
            node = Node(f"node-{i}", free_port())
            data = self.directory / node.name
            data.mkdir()
            argv = _server_argv(
                server, node.port, self.password, data,
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(data / "nodes.conf"),
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                # Its own free port for the cluster bus (the default, port + 10000, may be taken or > 65535).
                "--cluster-port", str(free_port()),
            )  # fmt: skip
            node.argv, node.directory = argv, data
            node.start()
            self.nodes.append(node)
        for node in self.nodes:
            _wait(lambda node=node: node.answers(self.password), f"{node.name} to answer")
        subprocess.run(
            [cli, "-a", self.password, "--no-auth-warning", "--cluster", "create",
             *(n.address for n in self.nodes), "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        _wait(self._healthy, "the cluster to be ready")
        # cluster_state:ok says nothing of replication: a replica that has not finished its first sync when
        # its master dies never fails over ("Disconnected from master for longer than allowed").
        for node in self.nodes:
            if self.is_master(node.port):
                self.wait_replica_in_sync(node)

    def client(self, node: Node) -> redis.Redis:
        return redis.Redis(port=node.port, password=self.password, socket_timeout=5)

    def _replica_in_sync(self, master: Node) -> bool:
        """Whether a live replica of ``master`` has its link up, its first sync done and no lag."""
        with contextlib.closing(self.client(master)) as client:
            info = client.info("replication")
        if info["role"] != "master":
            return False
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        for replica in replicas:
            if replica.get("state") != "online" or int(replica.get("lag", 99)) > 1:
                continue
            node = next((n for n in self.nodes if n.port == int(replica["port"]) and n.alive), None)
            if node is None:
                continue
            with contextlib.closing(self.client(node)) as client:
                mine = client.info("replication")
            if (
                mine["role"] == "slave"
                and mine.get("master_port") == master.port
                and mine.get("master_link_status") == "up"
                and not int(mine.get("master_sync_in_progress", 0))
            ):
                return True
        return False

    def wait_replica_in_sync(self, master: Node, timeout: float = STARTUP_SECONDS) -> None:
        """Wait until ``master`` has a live replica that is attached and caught up (so it may fail over)."""
        _wait(lambda: self._replica_in_sync(master), f"a replica of {master.name} to be in sync", timeout)

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url(), socket_timeout=5)

    def topology(self) -> dict[str, dict[str, object]]:
        """CLUSTER NODES as seen by a live node: node id -> {port, master (bool), failed, slots}."""
        node = next(n for n in self.nodes if n.alive)
        with contextlib.closing(self.client(node)) as client:
            parsed = client.execute_command("CLUSTER NODES")  # redis-py parses it: address -> fields
        out: dict[str, dict[str, object]] = {}
        for address, info in parsed.items():
            flags = str(info["flags"]).split(",")
            out[str(info["node_id"])] = {
                "port": int(str(address).split(":")[1].split("@")[0]),
                "master": "master" in flags,
                "failed": "fail" in flags or "fail?" in flags,
                # [low, high], or [slot] for a lone slot (after a migration)
                "slots": [(int(r[0]), int(r[-1])) for r in info.get("slots", []) if str(r[0]).isdigit()],
            }
        return out

    def is_master(self, port: int) -> bool:
        return any(i["port"] == port and i["master"] and not i["failed"] for i in self.topology().values())

    def owner(self, slot: int) -> tuple[str, Node]:
        """The master serving ``slot``: its node id and process."""
        for node_id, info in self.topology().items():
            if info["master"] and not info["failed"]:
                for low, high in info["slots"]:  # type: ignore[attr-defined]
                    if low <= slot <= high:
                        return node_id, next(n for n in self.nodes if n.port == info["port"])
        raise LookupError(f"no master serves slot {slot}")

    def _healthy(self) -> bool:
        for node in self.nodes:
            if not node.alive:
                continue
            with contextlib.closing(self.client(node)) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
        masters = [i for i in self.topology().values() if i["master"] and not i["failed"]]
        return len(masters) == 3

    def kill(self, node: Node) -> None:
        """SIGKILL ``node``; a master only once a replica is in sync, so that one can take over."""
        if self.is_master(node.port):
            self.wait_replica_in_sync(node)
        node.stop(signal.SIGKILL)

    def wait_failover(self, old: Node, timeout: float = 60.0) -> None:
        """Wait until the peers have marked the killed master failed and live masters serve every slot."""

        def taken_over() -> bool:
            live = {n.port for n in self.nodes if n.alive}
            masters = [i for i in self.topology().values() if i["master"] and not i["failed"]]
            if any(i["port"] == old.port for i in masters) or not all(i["port"] in live for i in masters):
                return False
            covered = sum(high - low + 1 for i in masters for low, high in i["slots"])  # type: ignore[attr-defined]
            return covered == 16384 and self._healthy()

        _wait(taken_over, f"a replica to take over from {old.name}", timeout)

    def migrate_slot(self, slot: int, to_port: int) -> int:
        """Move ``slot`` (and its keys) to the master on ``to_port`` with CLUSTER SETSLOT and MIGRATE, as
        ``redis-cli --cluster reshard`` does, while clients keep using it; returns how many keys moved."""
        source_id, source = self.owner(slot)
        target = next(n for n in self.nodes if n.port == to_port)
        with contextlib.closing(self.client(target)) as dst, contextlib.closing(self.client(source)) as src:
            target_id = dst.execute_command("CLUSTER MYID")
            target_id = target_id.decode() if isinstance(target_id, bytes) else target_id
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            moved = 0
            while keys := _patiently(lambda: src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10)):
                _patiently(
                    lambda keys=keys: src.execute_command(
                        "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "AUTH", self.password, "KEYS", *keys
                    )
                )
                moved += len(keys)
            # The target first, then the source, then every other master (the order redis-cli uses).
            dst.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            for info in self.topology().values():
                if info["master"] and not info["failed"] and info["port"] not in (to_port, source.port):
                    other = next(n for n in self.nodes if n.port == info["port"])
                    if not other.alive:  # a killed master not yet flagged by this node's view
                        continue
                    with contextlib.closing(self.client(other)) as c:
                        c.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


_Set = TypeVar("_Set", "SentinelSet", "ClusterSet")


def _running(made: _Set) -> Iterator[_Set]:
    """Start ``made`` for a fixture and stop it after, even when the test fails."""
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="session")
def shared_sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A Sentinel deployment shared by the tests that do not hurt it (each uses its own namespace)."""
    yield from _running(SentinelSet(tmp_path_factory.mktemp("sentinel-shared")))


@pytest.fixture(scope="session")
def shared_cluster_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    """A Redis Cluster shared by the tests that do not hurt it (each uses its own namespace)."""
    yield from _running(ClusterSet(tmp_path_factory.mktemp("cluster-shared")))


@pytest.fixture
def redis_sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A fresh Sentinel deployment for one test (which may kill its master)."""
    yield from _running(SentinelSet(tmp_path_factory.mktemp("sentinel")))


@pytest.fixture
def redis_cluster_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    """A fresh six-node Redis Cluster for one test (which may kill or reshard its nodes)."""
    yield from _running(ClusterSet(tmp_path_factory.mktemp("cluster")))
