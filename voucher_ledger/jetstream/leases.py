"""Leases in a NATS KV bucket, shared by the processor and projector hosts.

An entry expires ``ttl`` seconds after its last write (the bucket's max age). A holder renews
its keys every ttl/3 with compare-and-set on the revision; a failed renewal means another
instance took the key. A lease is "usually one", not exclusivity: the event store's expected
sequences and the projectors' locked checkpoints are what keep the data right.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


async def stop_worker(task: asyncio.Task[None], stop: Callable[[], None] | None = None) -> None:
    """Stop a worker task for sure: ask it (flag) and cancel until it is done. A cancel alone can
    be swallowed by ``asyncio.wait_for`` inside nats.py on Python < 3.12."""
    if stop is not None:
        stop()
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class LeaseHost(abc.ABC):
    def __init__(self, nc: Client, bucket: str, ttl: float, instance_id: str, label: str) -> None:
        self._nc = nc
        self._bucket = bucket
        self._ttl = ttl
        self.instance_id = instance_id
        self._label = label
        self._kv: KeyValue | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv

    @property
    def owner(self) -> bytes:
        return self.instance_id.encode()

    async def start(self) -> None:
        self._stopping = False
        self._kv = await self._nc.jetstream().key_value(self._bucket)
        await self.tick()
        self._loop_task = asyncio.create_task(
            self._loop(), name=f"{self._label}-{self.instance_id}"
        )

    async def stop(self, *, release: bool = True) -> None:
        """Stop holding. ``release=False`` simulates a crash: the leases are left to expire."""
        if self._loop_task is not None:
            self._stopping = True
            # nats.py's requests use asyncio.wait_for, which on Python 3.11 can swallow a
            # cancellation that races a reply: cancel again until the loop has really ended.
            while not self._loop_task.done():
                self._loop_task.cancel()
                await asyncio.wait({self._loop_task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.drop_all(release=release)

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._ttl / 3)
            if self._stopping:
                return
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the host alive through NATS blips
                log.warning("%s %s: lease tick failed: %r", self._label, self.instance_id, exc)
                self.on_tick_failed()

    async def acquire(self, key: str) -> int | None:
        """The new lease's revision, or None when someone else holds the key."""
        for _ in range(2):
            try:
                return int(await self.kv.create(key, self.owner))
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
            except nats.js.errors.KeyNotFoundError:
                # nats.py's create found the key taken, then looked for a delete marker and
                # found nothing: the old holder's entry expired in between (its TTL). The key
                # is free now: ask again (seen when a restarted process took back its leases).
                continue
        return None

    async def renew(self, key: str, revision: int) -> int | None:
        """The renewed revision, or None when the lease was lost to another instance."""
        try:
            return int(await self.kv.update(key, self.owner, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def release(self, key: str, revision: int) -> None:
        with contextlib.suppress(Exception):
            await self.kv.delete(key, last=revision)

    @abc.abstractmethod
    async def tick(self) -> None:
        """Renew what is held, take or give up keys."""

    @abc.abstractmethod
    async def drop_all(self, *, release: bool) -> None:
        """Stop every worker; release its lease if asked."""

    def on_tick_failed(self) -> None:  # noqa: B027 - optional hook
        """Called when a tick failed (NATS unreachable); default: nothing."""
