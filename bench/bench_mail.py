"""How fast herald.mail hands ~6 KB notifications to a relay: one thread, and N threads through the pool.

    .venv/bin/python bench/bench_mail.py [--server sink|aiosmtpd] [--threads 1,8] [--count 3000]
                                         [--api bytes|message] [--profile]

``--server sink`` starts postfix's C ``smtp-sink`` (``apt-get install postfix``; only the sink runs, on a
free loopback port), ``aiosmtpd`` starts ``aiosmtpd -c aiosmtpd.handlers.Sink`` in its own process, so the
server never competes with the client for the GIL. ``--api bytes`` is the delivery engine's path
(``RelayPool.send_bytes`` with bytes serialized once); ``--api message`` is herald 0.1's path (one
``SmtpTransport`` per thread, ``send(EmailMessage)`` serialized per send), which also runs against an older
checkout (``PYTHONPATH=old/src``). ``--profile`` prints the cProfile top of one thread's sends.
Prints sends/s per thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from herald.config import load_settings

SENDER = "herald@tracker.example.org"
LINE = "Alice changed Status: Open → Fixed; the crash on save no longer happens with large files.\n"


def build_message(i: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Tracker <{SENDER}>"
    message["To"] = f"user{i}@example.org"
    message["Subject"] = f"[bug #{i}] Crash on save when the file is larger than 2 GB"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="tracker.example.org")
    message["List-Id"] = "<bugs.tracker.example.org>"
    message.set_content(LINE * 64)  # ~6 KB
    return message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(kind: str) -> Iterator[int]:
    port = free_port()
    if kind == "sink":
        sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        # -c: count; 1000: backlog. No postfix daemon is involved.
        cmd = [sink, "-c", f"127.0.0.1:{port}", "1000"]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root without dropping privileges
            cmd[1:1] = ["-u", "nobody"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind} did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def senders(api: str, port: int, threads: int) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A send(thread, i) function and a close() for the chosen API."""
    settings = load_settings(env={"HERALD_SMTP_HOST": "127.0.0.1", "HERALD_SMTP_PORT": str(port)})
    if api == "bytes":
        from herald.mail import RelayPool
        from herald.mail.transport import serialize

        pool = RelayPool(settings, max_connections=threads)
        raws = [serialize(build_message(i)) for i in range(64)]

        def send_bytes(_thread: int, i: int) -> None:
            pool.send_bytes(raws[i % 64], SENDER, f"user{i}@example.org", message_id=None)

        return send_bytes, pool.close
    from herald.mail import SmtpTransport

    transports = [SmtpTransport(settings) for _ in range(threads)]
    messages = [build_message(i) for i in range(64)]

    def send_message(thread: int, i: int) -> None:
        transports[thread].send(messages[i % 64], SENDER, f"user{i}@example.org")

    def close() -> None:
        for transport in transports:
            transport.close()

    return send_message, close


def run(api: str, port: int, threads: int, count: int, profile: bool) -> float:
    send, close = senders(api, port, threads)
    for t in range(threads):  # open the connections before the clock starts
        send(t, t)
    per_thread = count // threads
    barrier = threading.Barrier(threads + 1)
    profiler = cProfile.Profile() if profile else None

    def work(t: int) -> None:
        barrier.wait()
        if profiler is not None and t == 0:
            profiler.enable()
        for i in range(per_thread):
            send(t, i)
        if profiler is not None and t == 0:
            profiler.disable()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
    return per_thread * threads / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=["sink", "aiosmtpd"], default="sink")
    parser.add_argument("--api", choices=["bytes", "message"], default="bytes")
    parser.add_argument("--threads", default="1,8")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with server(args.server) as port:
        for threads in (int(t) for t in args.threads.split(",")):
            rate = run(args.api, port, threads, args.count, args.profile)
            print(f"{args.server:8} api={args.api:7} threads={threads:2}  {rate:8.0f} sends/s", flush=True)


if __name__ == "__main__":
    main()
