"""Enqueue changes through one peer's own enqueue API (run inside bench/.venv-peers by bench/compare.py).

    driver.py SYSTEM --start ID --count N [--rate PER_SECOND]

Open loop: change i is due at start + i / rate (all at once without --rate); a late call goes out at once
and is stamped with its real time. Prints one JSON line: how many, first and last enqueue time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["celery", "dramatiq", "huey", "rq"])
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args()
    enqueue = importlib.import_module(f"{args.system}_app").enqueue
    first = last = 0.0
    t0 = time.monotonic()
    for i in range(args.count):
        if args.rate:
            delay = t0 + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        last = time.time()
        first = first or last
        enqueue(args.start + i, last)
    print(json.dumps({"count": args.count, "first": first, "last": time.time()}), flush=True)


if __name__ == "__main__":
    main()
