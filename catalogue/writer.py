"""The catalogue writer: a persistent MQTT 5 session at QoS 1 -> one database transaction per batch.

Delivery: paho's automatic PUBACK is off (``manual_ack``); a message is acknowledged only after
the transaction holding it has committed. A writer killed between receipt and commit leaves the
message unacknowledged in its broker session, and the broker sends it again when the writer
(same client id) comes back; the unique key on (device, id) turns every resend into a no-op.
The session (``clean_start=False``, Session Expiry Interval > 0) also holds what the devices
publish while the writer is down.

Scale-out: with ``shared_group`` set, results, errors, thumbnails and extra kinds are read
through ``$share/<group>/...`` so the broker deals each message to one member of the group.
``status``, ``availability`` and ``stats`` are subscribed normally by every writer: shared
subscriptions get no retained messages (MQTT 5, 4.8.2), and the device table is last-value,
so each writer writing it is harmless.

Threads: paho's network thread only queues messages; one worker thread parses, writes and
acknowledges. Nothing here can stop on a bad message: it is stored aside in ``rejected``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from catalogue.config import WriterSettings
from catalogue.errors import CatalogueError, RejectedMessage
from catalogue.messages import (
    BINARY_KINDS,
    PLAIN_KINDS,
    SUMMARY_KIND,
    Record,
    Thumbnail,
    parse_message,
)
from catalogue.store import Rejected, Store, WriteCounts, open_store

log = logging.getLogger(__name__)

SHARED_KINDS = ("classifications", "errors", SUMMARY_KIND)
LAST_VALUE_KINDS = ("status", "stats", *PLAIN_KINDS)
_RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class WriterCounters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    other: int = 0
    batches: int = 0
    store_failures: int = 0
    connects: int = 0
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {k: v for k, v in vars(self).items() if k != "lock"}


@dataclass(frozen=True)
class _Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # connection it arrived on: a PUBACK only makes sense on that one


def subscriptions(settings: WriterSettings) -> list[str]:
    """The topic filters this writer subscribes to (shared ones under ``$share/<group>/``)."""
    b = settings.broker
    prefix = b.topic_prefix.strip("/")
    shared = [f"{prefix}/+/{k}" for k in (*SHARED_KINDS, *b.extra_kinds)]
    shared += [f"{prefix}/+/{k}/+" for k in BINARY_KINDS]
    if b.shared_group:
        shared = [f"$share/{b.shared_group}/{t}" for t in shared]
    return shared + [f"{prefix}/+/{k}" for k in LAST_VALUE_KINDS]


class CatalogueWriter:
    """``start()``, ``stop(timeout)``; ``counters`` for the page, the tests and the benchmark."""

    def __init__(
        self,
        settings: WriterSettings,
        store_factory: Callable[[str], Store] = open_store,
        password: str | None = None,
    ) -> None:
        self.settings = settings
        self._store_factory = store_factory
        self._password = password
        self.counters = WriterCounters()
        self._queue: queue.Queue[_Incoming] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        self._client = self._make_client()
        self.prefix = settings.broker.topic_prefix.strip("/")

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Open the database (raises :class:`StoreError`), then connect and start writing."""
        self._store = self._store_factory(self.settings.database)
        b = self.settings.broker
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = b.session_expiry_s
        props.ReceiveMaximum = b.receive_maximum
        self._client.connect_async(
            b.host, b.port, keepalive=b.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._thread = threading.Thread(target=self._work, name="catalogue-writer", daemon=True)
        self._thread.start()

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker has acknowledged this connection's subscriptions."""
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Write and acknowledge what was received, then DISCONNECT (the session is kept)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        if self._store is not None:
            self._store.close()
            self._store = None

    # --- MQTT -------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        b = self.settings.broker
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=b.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        if b.username is not None:
            client.username_pw_set(b.username, self._password)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.counters.last_error = f"broker refused the connection: {reason_code}"
            log.error("%s", self.counters.last_error)
            return
        self._generation += 1
        with self.counters.lock:
            self.counters.connects += 1
        opts = SubscribeOptions(qos=1)
        client.subscribe([(t, opts) for t in subscriptions(self.settings)])
        log.info(
            "connected to %s:%s (session %s)",
            self.settings.broker.host,
            self.settings.broker.port,
            "resumed" if flags.session_present else "new",
        )
        self._connected.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode], *a: Any
    ) -> None:
        failed = [str(c) for c in codes if c.is_failure]
        if failed:
            self.counters.last_error = f"broker refused subscriptions: {', '.join(failed)}"
            log.error("%s", self.counters.last_error)
        else:
            log.info("%s subscribed to %s", self.settings.broker.client_id, self.prefix)
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, *args: Any) -> None:
        self._connected.clear()
        self._subscribed.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._stop.is_set():
            return  # stopping: left unacknowledged, the broker sends it again next session
        self._queue.put(
            _Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._generation)
        )

    # --- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        wait_s = self.settings.batch_wait_ms / 1000.0
        while True:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first]
            deadline = time.monotonic() + wait_s
            while len(batch) < self.settings.batch_max:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=max(0.0, remaining)))
                except queue.Empty:
                    break
            self._write(batch)

    def _parse(self, batch: list[_Incoming]) -> tuple[list[Record], list[Rejected], list[str]]:
        records: list[Record] = []
        rejected: list[Rejected] = []
        topics: list[str] = []
        for m in batch:
            try:
                records.append(parse_message(m.topic, m.payload, self.prefix))
                topics.append(m.topic)
            except RejectedMessage as exc:
                log.warning("stored aside %s: %s", m.topic, exc.reason)
                rejected.append(Rejected(m.topic, m.payload, exc.reason))
            except Exception as exc:  # a defect of this parser: the message is kept, not lost
                log.exception("stored aside %s: the parser failed", m.topic)
                reason = f"the parser failed ({type(exc).__name__}: {exc}); please report it"
                rejected.append(Rejected(m.topic, m.payload, reason[:500]))
        return records, rejected, topics

    def _write(self, batch: list[_Incoming]) -> None:
        records, rejected, topics = self._parse(batch)
        attempt = 0
        while True:
            try:
                counts = self._open().write(records, rejected)
                break
            except Exception as exc:  # the database, not the message: keep both, retry
                self._store_failed(exc)
            try:
                self._open()  # a fresh connection, then one by one: a row the database
                got = self._write_one_by_one(records, rejected, topics)  # refuses blocks no other
            except Exception as exc:
                self._store_failed(exc)
                got = None
            if got is not None:
                counts = got
                break
            if self._stop.is_set() and attempt >= 2:
                log.error("stopping with %d messages unwritten (not acknowledged)", len(batch))
                return
            time.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
            attempt += 1
        with self.counters.lock:
            c = self.counters
            c.received += len(batch)
            c.stored += counts.stored
            c.duplicates += counts.duplicates
            c.rejected += counts.rejected
            c.other += counts.other
            c.batches += 1
        gen = self._generation
        for m in batch:
            if m.qos > 0 and m.generation == gen:
                self._client.ack(m.mid, m.qos)

    def _write_one_by_one(
        self, records: list[Record], rejected: list[Rejected], topics: list[str]
    ) -> WriteCounts | None:
        """Each record in its own transaction; one the database refuses is stored aside."""
        total = WriteCounts()
        store = self._store
        if store is None:
            return None
        try:
            for rec, topic in zip(records, topics, strict=True):
                try:
                    n = store.write([rec])
                except Exception as exc:
                    if not store.is_row_error(exc):
                        raise  # the link, not the row: the caller retries the whole batch
                    reason = f"the database refused it: {str(exc).splitlines()[0][:300]}"
                    raw = rec.jpeg if isinstance(rec, Thumbnail) else rec.payload
                    data = raw.encode() if isinstance(raw, str) else raw
                    n = store.write([], [Rejected(topic, data, reason)])
                total.add(n)
            total.add(store.write([], rejected))
            return total
        except Exception as exc:  # the database is down: the caller retries the batch
            self._store_failed(exc)
            return None

    def _open(self) -> Store:
        if self._store is None:
            self._store = self._store_factory(self.settings.database)
        return self._store

    def _store_failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        with self.counters.lock:
            self.counters.store_failures += 1
            self.counters.last_error = text
        log.error("catalogue write failed (%s); retrying, nothing acknowledged", text)
        if isinstance(exc, CatalogueError) or self._store is None:
            return
        try:  # reconnect on the next try: a broken connection does not heal itself
            self._store.close()
        except Exception:
            log.debug("closing the failed store raised", exc_info=True)
        self._store = None
