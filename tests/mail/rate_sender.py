"""A worker process for the rate-limit test: waits for "go" on stdin, then sends N mails through a pool.

``python -m tests.mail.rate_sender HOST PORT STATE_FILE COUNT PERIOD N NAME``; prints "ready", then "done".
"""

from __future__ import annotations

import sys
from pathlib import Path

from herald.config import RateLimit, load_settings
from herald.mail import RateLimiter, RelayPool
from herald.mail.transport import serialize
from tests.mail.messages import SENDER, build_message


def main(argv: list[str]) -> int:
    host, port, state, count, period, n, name = argv
    settings = load_settings(env={"HERALD_SMTP_HOST": host, "HERALD_SMTP_PORT": port})
    limiter = RateLimiter(RateLimit(int(count), float(period)), Path(state))
    raw = serialize(build_message(subject=f"from {name}"))
    with RelayPool(settings, max_connections=2, limiter=limiter) as pool:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        for i in range(int(n)):
            pool.send_bytes(raw, SENDER, f"{name}-{i}@example.org")
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
