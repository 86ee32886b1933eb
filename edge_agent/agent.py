"""The daemon: bundle, backend, sources, pipeline and publisher, under systemd's eye.

Order matters. The bundle is verified and the backend warmed up before anything is consumed,
and READY=1 goes to systemd only then, so ``systemctl start`` returns when frames are really
being classified. WATCHDOG=1 comes from the infer loop itself: a wedged model stops the pings
and systemd restarts us. SIGTERM drains what is queued and flushes the outbox within
``drain_timeout_s``; what does not fit stays durable (outbox, ledger, broker session) for the next
start. SIGHUP loads the config and bundle again and swaps them in between two batches.
Signal handlers only set flags: the work happens in :meth:`Agent.run`'s thread.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import payloads, sd_notify
from edge_agent.backends.base import Backend
from edge_agent.backends.factory import create_backend
from edge_agent.config import AgentConfig, ConfigError, SourceConfig, load_config
from edge_agent.contract.decode_config import DecodeConfig, DecodeSpecMismatch
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.contract.manifest import Manifest, load_bundle
from edge_agent.ledger import Ledger
from edge_agent.mqtt_client import MqttPublisher
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline, PreprocessDevice, resolve_preprocess_device
from edge_agent.quarantine import Quarantine
from edge_agent.sources.base import FrameHub, Source
from edge_agent.sources.factory import create_source
from edge_agent.stats import Stats

log = logging.getLogger(__name__)
STATUS_EVERY_S = 2.0


class AgentError(GalaxyEdgeError):
    """The agent cannot start or its pipeline died."""


def decode_for(config: AgentConfig, manifest: Manifest) -> DecodeConfig:
    """The decoder's settings: this host's limits, the bundle's pixels (its ``decode`` spec).

    Raises :class:`ConfigError` (one line) when the config's ``decode.stretch`` or
    ``decode.fits`` is given and differs from what the bundle's model was trained with.
    """
    try:
        return config.decode.resolve(manifest.decode, f"the bundle {config.bundle}")
    except DecodeSpecMismatch as exc:
        raise ConfigError([str(exc)]) from exc


def load_backend(config: AgentConfig) -> tuple[Manifest, Backend]:
    """Verify the bundle (hashes, device, decoding spec against the config) and load it in its
    backend, warmed up."""
    manifest = load_bundle(config.bundle)
    decode_for(config, manifest)  # before the slow load: a contradiction is a config error
    p = config.pipeline
    backend = create_backend(
        config.bundle,
        manifest,
        p.backend,
        use_cuda=p.onnxruntime_cuda,
        intra_op_threads=p.intra_op_threads,
        spinning=p.intra_op_spinning,
        streams=p.inference_streams,
    )
    backend.warmup()
    return manifest, backend


def model_info(
    manifest: Manifest, backend: Backend, preprocess_device: PreprocessDevice
) -> dict[str, Any]:
    """The loaded model for the ``status`` birth, with where frames are really preprocessed."""
    return {
        "name": manifest.model.name,
        "sha256": manifest.files.get(manifest.model_file, manifest.source_onnx_sha256),
        "precision": manifest.precision,
        "backend": backend.name,
        "input_size": manifest.preprocess.input_size,
        "preprocess_device": preprocess_device,
        "calibration": calibration_info(manifest),
    }


def calibration_info(manifest: Manifest) -> dict[str, Any] | None:
    """How the bundle's probabilities are calibrated, for the birth; None: raw softmax."""
    c = manifest.calibration
    if c is None:
        return None
    return {
        "method": c.method,
        "temperature": c.temperature,
        "fitted_on": c.fitted_on,
        "images": c.images,
        "ece_before": c.ece_before,
        "ece_after": c.ece_after,
    }


class Agent:
    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.stats = Stats()
        self.hub = FrameHub()
        self.sources: dict[str, tuple[SourceConfig, Source]] = {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wd_interval = sd_notify.watchdog_interval_s()
        self._last_wd = 0.0
        self._last_status = 0.0
        self.ready_after_s: float | None = None
        self._t0 = time.monotonic()
        self._undo: list[Callable[[], object]] = []  # releases what start() took, newest last

    # --- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Load, warm up, connect and start consuming; READY=1 last. Undone on failure."""
        try:
            self._start()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        """Release what a failed start took, newest first (the outbox's file lock above all)."""
        for _, source in self.sources.values():
            source.stop(timeout=1.0)
        while self._undo:
            release = self._undo.pop()
            try:
                release()
            except Exception:  # the start's own error is the one to report
                log.exception("releasing after a failed start")

    def _start(self) -> None:
        cfg = self.config
        self.manifest, self.backend = load_backend(cfg)
        self._undo.append(self.backend.close)
        self.outbox = Outbox(
            cfg.mqtt.outbox.path,
            cfg.mqtt.outbox.max_bytes,
            cfg.mqtt.outbox.max_age_s,
            reserve_bytes=cfg.mqtt.outbox.reserve_bytes,
        )
        self._undo.append(self.outbox.close)
        self.ledger = Ledger(cfg.state_dir / "ledger.sqlite3")
        self._undo.append(self.ledger.close)
        self.ledger.forget_gone()
        self.quarantine = Quarantine(cfg.quarantine_dir)
        self.pipeline = Pipeline(
            cfg,
            self.hub,
            self.backend,
            self.outbox,
            self.quarantine,
            self.stats,
            heartbeat=self._heartbeat,
            on_stored=lambda: self.publisher.kick(),
            heartbeat_every_s=0.5 if self._wd_interval is None else min(0.5, self._wd_interval / 2),
        )
        self._undo.append(lambda: self.pipeline.stop(time.monotonic() + 1.0, drain=False))
        self.publisher = self._make_publisher(cfg)
        self._undo.append(lambda: self.publisher.stop(timeout=1.0))
        for sc in cfg.sources:
            self.sources[sc.display_name] = (sc, self._create_source(sc, cfg))
        self.pipeline.start()
        self.publisher.start()
        for _, source in self.sources.values():
            source.start()
        self.ready_after_s = time.monotonic() - self._t0
        log.info(
            "ready in %.2f s: %s (%s, %s) from %s",
            self.ready_after_s,
            self.manifest.model.name,
            self.backend.name,
            self.manifest.precision,
            cfg.bundle,
        )
        sd_notify.ready(self.status_line())

    def _make_publisher(self, cfg: AgentConfig) -> MqttPublisher:
        secret = cfg.mqtt.password()
        return MqttPublisher(
            cfg.mqtt,
            self.outbox,
            cfg.device_id,
            model_info(self.manifest, self.backend, self.pipeline.preprocess_device),
            password=secret.get_secret_value() if secret is not None else None,
        )

    # --- running ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def run(self) -> int:
        """Serve until asked to stop; returns the process exit code."""
        next_stats = time.monotonic() + self.config.stats_interval_s
        try:
            while not self._stop.wait(0.2):
                if not self.pipeline.alive():
                    log.error("pipeline stopped: %s", self.pipeline.failure)
                    self.shutdown()
                    return 1
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + self.config.stats_interval_s
                    self.publish_stats()
        except GalaxyEdgeError as exc:
            log.error("%s", exc)
            self.shutdown()
            return 1
        self.shutdown()
        return 0

    def _heartbeat(self) -> None:
        """Called by the infer loop at every turn (at most ``idle_timeout_s`` apart)."""
        now = time.monotonic()
        if self._wd_interval is not None and now - self._last_wd >= self._wd_interval:
            sd_notify.watchdog()
            self._last_wd = now
        if now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            sd_notify.status(self.status_line())

    def status_line(self) -> str:
        s = self.stats.snapshot()
        p99 = s.latency_ms.get("total", {}).get("p99")
        lat = f", p99 {p99:.0f} ms" if p99 is not None else ""
        trouble = ", OUTBOX DISK FULL (waiting)" if self.outbox.health().full else ""
        if not self.publisher.connection.connected:
            trouble += ", mqtt not connected"
        return (
            f"{s.fps_in:.1f} fps in, {s.fps_out:.1f} out, {s.frames_out} done, "
            f"{s.errors} rejected, queue {self.hub.depth()}, outbox {self.outbox.depth()}{lat}"
            f"{trouble}"
        )

    def _create_source(self, sc: SourceConfig, cfg: AgentConfig) -> Source:
        source = create_source(
            sc,
            self.hub,
            ledger=self.ledger,
            mqtt=cfg.mqtt,
            device_id=cfg.device_id,
            max_bytes=cfg.decode.max_bytes,
        )
        source.on_problem = functools.partial(
            self.pipeline.report_source_problem, sc.display_name, sc.uri
        )
        return source

    def stats_body(self) -> dict[str, Any]:
        interval = self.stats.take_interval()  # rates and percentiles since the last report
        s = self.stats.snapshot()
        return payloads.stats_payload(
            device_id=self.config.device_id,
            at=time.time(),
            uptime_s=s.uptime_s,
            interval_s=interval.seconds,
            frames=(s.frames_in, s.frames_out, s.errors),
            interval_frames=(interval.frames_in, interval.frames_out, interval.errors),
            latency_ms=interval.latency_ms,
            queue_depth=self.hub.depth() + self.pipeline.depth(),
            frames_dropped=self.hub.dropped(),
            outbox_depth=self.outbox.depth(),
            outbox_bytes=self.outbox.bytes(),
            outbox_dropped=self.outbox.dropped(),
            mqtt=self.publisher.counters(),
            outbox_health=self.outbox.health().as_stats(),
            mqtt_health=self.publisher.health(),
            sources={
                name: health
                for name, (_, source) in self.sources.items()
                if (health := source.health()) is not None
            },
        )

    def publish_stats(self) -> bool:
        """``stats`` at QoS 0 outside the outbox: when offline it is skipped, not queued."""
        body = self.stats_body()
        t = payloads.topic(self.config.mqtt.topic_prefix, self.config.device_id, "stats")
        return self.publisher.publish_direct(t, payloads.to_bytes(body), qos=0)

    # --- reload ----------------------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: new config and bundle, swapped in between batches; queued frames are kept.

        A config or bundle that does not load leaves the running one in place (logged).
        Settings that name durable state (device id, outbox, state dir) need a restart.
        """
        sd_notify.reloading()
        try:
            if self.config_path is None:
                raise AgentError("no config file to reload from")
            new = load_config(self.config_path)
            old = self.config
            fixed = [
                k
                for k in ("device_id", "state_dir", "quarantine_dir")
                if getattr(new, k) != getattr(old, k)
            ]
            if new.mqtt.outbox != old.mqtt.outbox:
                fixed.append("mqtt.outbox")
            if fixed:
                raise AgentError(f"reload: {', '.join(fixed)} changed; restart the agent for that")
            manifest, backend = load_backend(new)
            try:
                preprocess_device = resolve_preprocess_device(
                    backend, new.pipeline.preprocess_device
                )
            except GalaxyEdgeError:
                backend.close()
                raise
        except GalaxyEdgeError as exc:  # ConfigError included
            for line in str(exc).splitlines():
                log.error("reload refused, still running the old config: %s", line)
            sd_notify.ready(self.status_line())
            return False
        old_backend = self.pipeline.swap(new, backend)
        if self.pipeline.wait_swapped(60.0):
            old_backend.close()
        else:  # a batch still holds the old backend: leave it to the garbage collector
            log.warning("reload: the pipeline did not switch within 60 s; old backend left open")
        self.manifest, self.backend, self.config = manifest, backend, new
        self._reload_sources(new)
        if new.mqtt != old.mqtt:
            self.publisher.stop(timeout=5.0)
            self.publisher = self._make_publisher(new)
            self.publisher.start()
        else:
            self.publisher.update_model_info(model_info(manifest, backend, preprocess_device))
        log.info("reloaded %s: %s", self.config_path, manifest.model.name)
        sd_notify.ready(self.status_line())
        return True

    def _reload_sources(self, new: AgentConfig) -> None:
        wanted = {sc.display_name: sc for sc in new.sources}
        for name, (sc, source) in list(self.sources.items()):
            if wanted.get(name) != sc:
                source.stop()  # its queued frames stay in the hub and are still classified
                del self.sources[name]
        for name, sc in wanted.items():
            if name not in self.sources:
                source = self._create_source(sc, new)
                source.start()
                self.sources[name] = (sc, source)

    # --- stop ------------------------------------------------------------------------------

    def shutdown(self) -> bool:
        """Stop intake, classify what is queued, flush the outbox; True if all of it fit."""
        budget = self.config.drain_timeout_s
        deadline = time.monotonic() + budget
        sd_notify.stopping(
            f"draining {self.hub.depth()} queued frames, outbox {self.outbox.depth()}"
        )
        for _, source in self.sources.values():
            source.pause()
        frames_drained = self.pipeline.stop(deadline - 0.1 * budget)
        flushed = self.publisher.stop(timeout=max(0.5, deadline - time.monotonic()))
        for _, source in self.sources.values():
            source.stop(timeout=1.0)
        left = self.outbox.depth()
        self.outbox.close()
        self.ledger.close()
        self.backend.close()
        log.info(
            "stopped: queue %s, %d messages kept in the outbox for the next start",
            "drained" if frames_drained else "NOT drained (replayed at next start)",
            left,
        )
        return frames_drained and flushed
