"""``edge-agent classify``: the agent's path once, on files, without a broker.

For an astronomer's archive and for tests. Each file becomes the JSON objects the agent would
publish for it, one per line on stdout (JSON Lines, the wire's compact sorted form): a
``classification`` per image, or for a wide field (``--sources``, or sources in ``mode: fields``
in the config) a ``frame_summary``, one ``classification`` per galaxy with its ``cutout``, and
an ``error`` per problem; an ``error`` for a file that cannot be read. Nothing is quarantined
(``quarantined_to`` is null). Progress goes to stderr.

``frame_ref`` is the dir source's (``<absolute path>@<mtime in ns>``), and a file inside the
folder of one of the config's ``dir://`` sources is named by that source (else ``classify``),
so that results match those of an agent watching the same files: same ``id``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import payloads
from edge_agent.backends.base import Backend
from edge_agent.backends.factory import create_backend
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.contract.decode import DecodeError, decode_bytes
from edge_agent.contract.decode_config import DecodeConfig, DecodeSettings, DecodeSpecMismatch
from edge_agent.contract.manifest import Manifest, load_bundle
from edge_agent.contract.preprocess import preprocess_batch
from edge_agent.fields.settings import FieldsConfig
from edge_agent.fields.stage import run_field
from edge_agent.pipeline_rejects import unquarantined_error
from edge_agent.results import Classification, classify
from edge_agent.sources.file_input import NotRegularFileError, read_regular_file

SOURCE_NAME = "classify"
DEVICE_ID = "local"


def frame_ref_of(path: Path) -> str:
    """The dir source's reference of a file: absolute path, ``@``, mtime in nanoseconds."""
    return f"{path.resolve()}@{path.stat().st_mtime_ns}"


class OneShot:
    """A loaded bundle that turns files into the agent's payloads (dicts)."""

    def __init__(
        self,
        bundle: Path,
        config: AgentConfig | None = None,
        *,
        fields_mode: bool | None = None,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.progress = progress
        self.manifest: Manifest = load_bundle(bundle)
        settings = config.decode if config is not None else DecodeSettings()
        try:  # the bundle's pixels; a config that contradicts them is refused
            self.decode: DecodeConfig = settings.resolve(
                self.manifest.decode, f"the bundle {bundle}"
            )
        except DecodeSpecMismatch as exc:
            raise ConfigError([str(exc)]) from exc
        pipeline = config.pipeline if config is not None else None
        self.backend: Backend = create_backend(
            bundle,
            self.manifest,
            pipeline.backend if pipeline is not None else "auto",
            intra_op_threads=pipeline.intra_op_threads if pipeline is not None else None,
        )
        self.fields: FieldsConfig = config.fields if config is not None else FieldsConfig()
        self.device_id = config.device_id if config is not None else DEVICE_ID
        self.uncertain_below = pipeline.uncertain_below if pipeline is not None else 0.5
        self.top_k = pipeline.top_k if pipeline is not None else 3
        if fields_mode is None:
            fields_mode = config is not None and any(s.mode == "fields" for s in config.sources)
        self.fields_mode = fields_mode
        m = self.manifest
        self.model_ref = payloads.ModelRef(
            m.model.name, m.files.get(m.model_file, m.source_onnx_sha256), m.precision
        )
        self.spec = m.preprocess
        # softmax(logits / T) when the bundle is calibrated, as the agent does
        self.temperature = m.calibration.temperature if m.calibration else None
        self.max_batch = max(1, min(64, self.backend.max_batch))
        self.folders = [
            (Path(sc.uri.split("://", 1)[1]).resolve(), sc.display_name)
            for sc in (config.sources if config is not None else [])
            if sc.scheme == "dir"
        ]

    def source_of(self, path: Path) -> str:
        """The name of the config's dir:// source whose folder holds ``path``, else classify."""
        where = path.resolve().parent
        for folder, name in self.folders:
            if where == folder or folder in where.parents:
                return name
        return SOURCE_NAME

    def close(self) -> None:
        self.backend.close()

    # --- model -------------------------------------------------------------------------------

    def _classify(self, images: Sequence[np.ndarray]) -> tuple[list[Classification], float]:
        results: list[Classification] = []
        t0 = time.perf_counter()
        for start in range(0, len(images), self.max_batch):
            chunk = images[start : start + self.max_batch]
            logits = self.backend.infer(preprocess_batch(chunk, self.spec))
            results += classify(
                logits,
                uncertain_below=self.uncertain_below,
                k=self.top_k,
                temperature=self.temperature,
            )
        return results, time.perf_counter() - t0

    def _error(self, source: str, frame_ref: str, reason: str, detail: str) -> dict[str, Any]:
        return unquarantined_error(self.device_id, source, frame_ref, reason, detail)

    # --- files -------------------------------------------------------------------------------

    def run(self, path: Path) -> Iterator[dict[str, Any]]:
        """The payloads of one file (raises OSError when it vanished or cannot be read)."""
        frame_ref, source = frame_ref_of(path), self.source_of(path)
        received = time.time()
        try:
            if self.fields_mode:
                yield from self._field(path, source, frame_ref, received)
            else:
                yield from self._stamp(path, source, frame_ref, received)
        except NotRegularFileError as exc:
            yield self._error(source, frame_ref, exc.reason, str(exc))
        except DecodeError as exc:
            yield self._error(source, frame_ref, exc.reason, str(exc))

    def run_bands(self, paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
        """Three band files (g, r, z) of one exposure, as one wide field named by the first."""
        frame_ref, source = frame_ref_of(paths[0]), self.source_of(paths[0])
        try:
            yield from self._field(list(paths), source, frame_ref, time.time())
        except NotRegularFileError as exc:
            yield self._error(source, frame_ref, exc.reason, str(exc))
        except DecodeError as exc:
            yield self._error(source, frame_ref, exc.reason, str(exc))

    def _stamp(
        self, path: Path, source: str, frame_ref: str, received: float
    ) -> Iterator[dict[str, Any]]:
        t0 = time.perf_counter()
        image = decode_bytes(read_regular_file(path, self.decode.max_bytes), self.decode)
        decode_s = time.perf_counter() - t0
        (result,), infer_s = self._classify([image])
        yield payloads.classification_payload(
            device_id=self.device_id,
            source=source,
            frame_ref=frame_ref,
            received_at=received,
            classified_at=time.time(),
            result=result,
            model=self.model_ref,
            latency_ms={"decode": decode_s * 1e3, "infer": infer_s * 1e3},
        )

    def _field(
        self, data: Path | list[Path], source: str, frame_ref: str, received: float
    ) -> Iterator[dict[str, Any]]:
        run = run_field(
            data,
            decode=self.decode,
            fields=self.fields,
            input_size=self.spec.input_size,
            device_id=self.device_id,
            source_name=source,
            frame_ref=frame_ref,
            received=received,
        )
        s = run.summary
        self.progress(
            f"{s['sources_found']} sources, {s['galaxies_kept']} galaxies kept "
            f"({s['width']}x{s['height']}, {s['bands']} band(s), sky {s['sky']})"
        )
        yield run.summary
        yield from run.errors
        if not run.cutouts:
            return
        results, infer_s = self._classify([c.image for c in run.cutouts])
        per_cutout_ms = infer_s * 1e3 / len(run.cutouts)
        now = time.time()
        for cutout, result in zip(run.cutouts, results, strict=True):
            yield payloads.classification_payload(
                device_id=self.device_id,
                source=source,
                frame_ref=frame_ref,
                received_at=received,
                classified_at=now,
                result=result,
                model=self.model_ref,
                latency_ms={
                    "decode": run.read_s * 1e3,
                    "detect": run.process_s * 1e3,
                    "infer": per_cutout_ms,
                },
                cutout=cutout.position(),
            )
