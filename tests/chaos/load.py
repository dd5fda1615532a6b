"""The load: changes through the HTTP API from a few client threads at a steady rate."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

from tests.chaos import profile as P
from tests.chaos.stack import FRONTEND_START_SECONDS, NOTIFIED, ChaosStack


@dataclass
class Load:
    """Changes through the HTTP API: ``clients`` threads, ``rate`` changes per second in all, a quarter
    of them creations (each notifies an assignee and one to three people in cc), the rest updates.

    A request the front end never answered (it was killed) is counted as interrupted, not retried: whether
    it committed is for the reconciliation to find out, from the database."""

    stack: ChaosStack
    profile: P.Profile
    seed: int
    created: list[int] = field(default_factory=list)  # artifact ids acknowledged
    acknowledged: list[int] = field(default_factory=list)  # changeset ids acknowledged
    interrupted: int = 0
    busy: int = 0  # requests under way right now
    refused: list[str] = field(default_factory=list)  # any other answer: a bug
    started: float = 0.0
    finished: float = 0.0  # when the last client submitted its last change
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _numbers: Iterator[int] = field(default_factory=itertools.count)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.started = time.monotonic()
        for n in range(self.profile.clients):
            thread = threading.Thread(target=self._client, args=(n,), name=f"chaos-client-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
            assert not thread.is_alive(), "the load did not finish"

    @property
    def done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Submit no more changes (the test failed: do not wait for the whole load)."""
        self._stopped.set()

    def _next(self) -> int | None:
        with self._lock:
            number = next(self._numbers)
        return number if number < self.profile.changes and not self._stopped.is_set() else None

    def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        token = self.stack.world.tokens["alice"]
        with httpx.Client(
            base_url=self.stack.frontend.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            while (number := self._next()) is not None:
                due = self.started + number / self.profile.rate
                if (pause := due - time.monotonic()) > 0:
                    time.sleep(pause)  # pacing the load, not waiting for an outcome
                self.stack.frontend.up.wait(FRONTEND_START_SECONDS)
                with self._lock:
                    self.busy += 1
                try:
                    self._change(client, rng, number)
                except httpx.TransportError:
                    with self._lock:
                        self.interrupted += 1
                finally:
                    with self._lock:
                        self.busy -= 1
        with self._lock:
            self.finished = max(self.finished, time.monotonic())  # the last change of all, in the end

    def _change(self, client: httpx.Client, rng: random.Random, number: int) -> None:
        with self._lock:
            known = list(self.created)
        if len(known) < 3 or rng.random() < 0.25:
            assignee = rng.choice(NOTIFIED)
            cc = rng.sample([u for u in NOTIFIED if u != assignee], rng.randint(1, 3))
            r = client.post(
                f"/api/trackers/{self.stack.world.bugs.id}/artifacts",
                json={
                    "values": {
                        "title": f"Chaos {number}",
                        "assigned_to": assignee,
                        "cc": cc,
                        "severity": rng.randint(1, 5),
                    }
                },
            )
            if r.status_code == 201:
                body = r.json()
                with self._lock:
                    self.created.append(body["id"])
                    self.acknowledged.append(body["changeset_id"])
                return
        else:
            values: dict[str, Any] = {"description": f"change {number} ({rng.random():.9f})"}
            if rng.random() < 0.3:
                values["status"] = rng.choice(["Open", "In progress", "Fixed", "Closed"])
            r = client.patch(
                f"/api/artifacts/{rng.choice(known)}", json={"values": values, "comment": f"update {number}"}
            )
            if r.status_code == 200:
                with self._lock:
                    self.acknowledged.append(r.json()["changeset_id"])
                return
        with self._lock:
            self.refused.append(f"{r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:300]}")
