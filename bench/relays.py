"""The bench's SMTP relays, each in its own process, and what the harness reads from them.

- ``SinkRelay``: postfix's C ``smtp-sink`` (fast). It reports only a running message counter (``-c``), which
  the harness timestamps as it arrives on the pipe.
- ``RecordingRelay``: aiosmtpd in a child process (``python bench/relays.py --delay S``) that notes the
  acceptance time, change id, enqueue stamp and recipient of every message, one line each on its stdout;
  with ``--delay 0.05`` it is the slow relay (the DATA reply waits 50 ms, many connections at once).

The change id comes from ``X-Bench-Change`` (peers) or ``X-Herald-Changeset-ID`` (herald); the peers' enqueue
stamp from ``X-Bench-Enqueued`` (herald's is kept by the harness, which made the request).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHANGE = re.compile(rb"^(?:X-Bench-Change|X-Herald-Changeset-ID): *(\d+)", re.IGNORECASE | re.MULTILINE)
ENQUEUED = re.compile(rb"^X-Bench-Enqueued: *([0-9.]+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Arrival:
    at: float  # time.time() when the relay accepted the DATA
    change: int | None
    enqueued: float | None
    rcpt: str


class _Relay(abc.ABC):
    """A relay process whose stdout a thread reads; subclasses parse the lines."""

    kind = ""
    settings = ""

    def __init__(self, argv: list[str]) -> None:
        self.lock = threading.Lock()
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
        assert self.process.stdout is not None
        self.port = self._read_port(self.process.stdout)
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    @abc.abstractmethod
    def _read_port(self, stream: Any) -> int: ...

    @abc.abstractmethod
    def _read(self, stream: Any) -> None: ...

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def times(self) -> list[float]: ...

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                import os

                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            import os

            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._reader.join(timeout=5)


class RecordingRelay(_Relay):
    """aiosmtpd that records every message (``delay`` seconds before each DATA reply)."""

    def __init__(self, delay: float = 0.0, port: int = 0) -> None:
        self.kind = "slow (aiosmtpd, DATA +50 ms)" if delay else "recording (aiosmtpd)"
        self.settings = (
            f"aiosmtpd {_aiosmtpd_version()}, DATA reply after {delay * 1000:.0f} ms, backlog 1024"
        )
        self.arrivals: list[Arrival] = []
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), "--delay", str(delay), "--port", str(port)]
        )

    def _read_port(self, stream: Any) -> int:
        line = stream.readline().decode()
        if not line.startswith("port "):
            raise SystemExit(f"the recording relay did not start: {line!r}")
        return int(line.split()[1])

    def _read(self, stream: Any) -> None:
        for raw in stream:
            at, change, enqueued, rcpt = raw.decode().split()
            arrival = Arrival(
                float(at),
                None if change == "-" else int(change),
                None if enqueued == "-" else float(enqueued),
                rcpt.lower(),
            )
            with self.lock:
                self.arrivals.append(arrival)

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def times(self) -> list[float]:
        with self.lock:
            return [a.at for a in self.arrivals]


class SinkRelay(_Relay):
    """postfix's ``smtp-sink`` on loopback; every ``mesg=N`` counter update is timestamped on arrival."""

    kind = "fast (postfix smtp-sink)"

    def __init__(self, port: int) -> None:
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not Path(binary).exists():
            raise SystemExit("smtp-sink not found: apt-get install postfix (see docs/benchmarks.md)")
        self._port = port
        self._times: list[float] = []
        self._last = 0
        argv = [binary, "-c", "-m", "1024", "-u", "nobody", f"127.0.0.1:{port}", "1024"]
        self.settings = "postfix smtp-sink " + " ".join(argv[1:])
        super().__init__(argv)

    def _read_port(self, stream: Any) -> int:
        import socket

        deadline = time.monotonic() + 10
        while True:  # smtp-sink prints nothing until the first message: wait for the socket instead
            try:
                socket.create_connection(("127.0.0.1", self._port), timeout=1).close()
                return self._port
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("smtp-sink did not start") from None
                time.sleep(0.02)

    def _read(self, stream: Any) -> None:
        pending = b""
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                return
            now = time.time()
            pending += chunk
            *updates, pending = pending.split(b"\r")
            for update in updates:
                match = re.search(rb"mesg=(\d+)", update)
                if match is None:
                    continue
                n = int(match.group(1))
                with self.lock:
                    self._times.extend([now] * (n - self._last))
                    self._last = max(self._last, n)

    def count(self) -> int:
        with self.lock:
            return self._last

    def times(self) -> list[float]:
        with self.lock:
            return list(self._times)


def _aiosmtpd_version() -> str:
    from importlib.metadata import version

    return version("aiosmtpd")


# --- the recording server's own process --------------------------------------------------------------


class _Handler:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        now = time.time()
        head = envelope.original_content[:8192]  # the headers: parsing whole messages would cost CPU
        change = CHANGE.search(head)
        enqueued = ENQUEUED.search(head)
        fields = (
            f"{now:.6f}",
            change.group(1).decode() if change else "-",
            enqueued.group(1).decode() if enqueued else "-",
            ",".join(envelope.rcpt_tos) or "-",
        )
        sys.stdout.write(" ".join(fields) + "\n")
        sys.stdout.flush()
        return "250 2.0.0 OK"


async def _serve(delay: float, port: int) -> None:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = _Handler(delay)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="relay.bench", ident="bench relay"),
        "127.0.0.1",
        port,
        backlog=1024,
        reuse_address=True,
    )
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the bench's recording aiosmtpd relay")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each DATA reply")
    parser.add_argument("--port", type=int, default=0, help="the port to listen on (0: any free one)")
    options = parser.parse_args()
    asyncio.run(_serve(options.delay, options.port))
