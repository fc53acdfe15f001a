"""Lease renewal for the claims a worker has in flight, from one long-lived thread."""

from __future__ import annotations

import logging
import threading
import time

from charter.core.errors import FenceLost, StoreError
from charter.core.ports import Store
from charter.core.records import Claim

__all__ = ["Beat", "Heartbeats"]

log = logging.getLogger("charter.worker")


class Beat:
    """One claim whose lease is being renewed; ``lost`` once the store refused its fence."""

    def __init__(self, claim: Claim, due: float) -> None:
        self.claim = claim
        self.due = due
        self.lost = False


class Heartbeats:
    """Renews the leases of a worker's claims in flight, from one long-lived thread (a
    thread per claim costs more to start than a no-op node takes to run). A claim is renewed
    every third of the lease; the thread wakes at least that often, so a claim registered
    while it sleeps is renewed well before its lease runs out."""

    def __init__(self, store: Store, lease_secs: float) -> None:
        self._store = store
        self._period = lease_secs / 3
        self._lease = lease_secs
        self._cond = threading.Condition()
        self._beats: set[Beat] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, claim: Claim) -> Beat:
        beat = Beat(claim, time.monotonic() + self._period)
        with self._cond:
            self._beats.add(beat)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="charter-heartbeat", daemon=True
                )
                self._thread.start()
        return beat

    def stop(self, beat: Beat) -> None:
        with self._cond:
            self._beats.discard(beat)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = [beat for beat in self._beats if beat.due <= now]
                if not due:
                    earliest = min((beat.due for beat in self._beats), default=now + self._period)
                    self._cond.wait(min(max(earliest - now, 0.001), self._period))
                    continue
                for beat in due:
                    beat.due = now + self._period
            for beat in due:
                self._renew(beat)

    def _renew(self, beat: Beat) -> None:
        claim = beat.claim
        try:
            self._store.heartbeat(claim.item.item_id, claim.fence, lease_secs=self._lease)
        except FenceLost:
            beat.lost = True
            self.stop(beat)
        except StoreError as error:  # transient: the next beat may succeed
            log.warning("heartbeat of %s failed: %s", claim.item.item_id, error)
        except Exception:  # a heartbeat must never kill the renewing thread
            log.exception("heartbeat of %s failed", claim.item.item_id)
