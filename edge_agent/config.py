"""Strict configuration of the edge agent (YAML validated by pydantic, unknown keys are errors).

A typo in a config file on a remote device must not be silently ignored, so every model forbids
extra keys, and :func:`load_config` reports every problem at once, one per line, each naming the
key path and the YAML line (the node tree from ``yaml.compose`` maps paths to lines).
Secrets are never stored in the YAML: the MQTT password comes from a file or from a systemd
credential (``LoadCredential=`` puts it in ``$CREDENTIALS_DIRECTORY``) and is held as a
:class:`pydantic.SecretStr`, so it never appears in a repr or a log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from edge_agent.contract.decode_config import ALL_FORMATS, DecodeSettings, ImageFormat
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.fields.settings import FieldsConfig

LIVE_SCHEMES = ("v4l2", "csi", "rtsp", "rtsps")


class ConfigError(GalaxyEdgeError):
    """A configuration file that cannot be used; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client private key (mutual TLS)")
    insecure: bool = Field(False, description="skip host name verification (testing only)")


class OutboxConfig(_Strict):
    path: Path = Field(Path("/var/lib/galaxy-edge/outbox.sqlite3"), description="SQLite file")
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="oldest dropped (counted) above")
    max_age_s: float = Field(7 * 24 * 3600.0, gt=0, description="older results dropped (counted)")
    reserve_bytes: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="space set aside next to the outbox (<path>.reserve) and freed when its disk "
        "is full, so acknowledged messages can still be deleted; 0 disables it",
    )


class ThumbnailConfig(_Strict):
    enabled: bool = Field(
        False,
        description="publish a small JPEG of each classified image or cut-out on "
        "<prefix>/<device_id>/thumbnails/<id> (through the outbox, like its result)",
    )
    size: int = Field(128, ge=16, le=1024, description="longer side in pixels at most")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality")


class MqttConfig(_Strict):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = Field(None, description="default: galaxy-edge-<device_id>")
    keepalive: int = Field(30, ge=5, le=3600)
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the password")
    password_credential: str | None = Field(
        None, description="name of a systemd credential ($CREDENTIALS_DIRECTORY/<name>)"
    )
    topic_prefix: str = Field("galaxy-edge", pattern=r"^[^#+]+$")
    qos: Literal[0, 1, 2] = 1
    max_in_flight: int = Field(64, ge=1, le=65535)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    thumbnails: ThumbnailConfig = Field(
        default_factory=ThumbnailConfig, description="small JPEGs of what was classified"
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password_file is not None and self.password_credential is not None:
            raise ValueError("set password_file or password_credential, not both")
        return self

    def password(self) -> SecretStr | None:
        """The broker password, read now from its file or credential (``None`` if none is set).

        Raises :class:`ConfigError` naming the file (never its content) when it cannot be read.
        """
        if self.password_file is not None:
            path = self.password_file
        elif self.password_credential is not None:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    [
                        f"mqtt.password_credential: {self.password_credential!r} needs "
                        "$CREDENTIALS_DIRECTORY (set by systemd LoadCredential=); "
                        "use password_file outside systemd"
                    ]
                )
            path = Path(directory) / self.password_credential
        else:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                [f"mqtt password: cannot read {path} ({type(exc).__name__}); check the file"]
            ) from exc
        return SecretStr(text.rstrip("\r\n"))


class IndiSourceConfig(_Strict):
    """Settings of an ``indi://`` camera source (absent: listen to exposures others take)."""

    exposure_s: float | None = Field(
        None, gt=0, le=3600, description="drive the camera: expose this long (None: only listen)"
    )
    interval_s: float = Field(
        0.0, ge=0, le=86400, description="drive mode: pause between an image and the next exposure"
    )
    blob: str | None = Field(
        None, description="take only this BLOB property (e.g. CCD1); default: every BLOB"
    )


class SourceConfig(_Strict):
    uri: str = Field(
        description=(
            "dir:///path, indi://host:port/<device>, v4l2:///dev/video0, csi://0, rtsp://…, "
            "file://…, mqtt://"
        )
    )
    name: str | None = Field(None, description="default: derived from the URI")
    formats: list[ImageFormat] = Field(default_factory=lambda: list(ALL_FORMATS))
    back_pressure: Literal["block", "drop_oldest"] | None = Field(
        None, description="default: drop_oldest for live cameras, block otherwise"
    )
    queue_size: int = Field(32, ge=1, le=100_000)
    mode: Literal["stamp", "fields"] = Field(
        "stamp",
        description=(
            "stamp: each frame is one centred galaxy (Galaxy10-like); fields: a wide field "
            "(FITS), whose galaxies are found, cut out and classified one by one (see fields:)"
        ),
    )
    indi: IndiSourceConfig | None = Field(None, description="indi:// sources only")

    @model_validator(mode="after")
    def _indi_settings_on_indi_only(self) -> SourceConfig:
        if self.indi is not None and self.scheme != "indi":
            raise ValueError("indi settings are for indi:// sources only")
        return self

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0].lower() if "://" in self.uri else ""

    @property
    def policy(self) -> Literal["block", "drop_oldest"]:
        if self.back_pressure is not None:
            return self.back_pressure
        return "drop_oldest" if self.scheme in LIVE_SCHEMES else "block"

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        rest = self.uri.split("://", 1)[-1].rstrip("/")
        return f"{self.scheme}:{rest.rsplit('/', 1)[-1] or rest}"


class PipelineConfig(_Strict):
    max_batch: int = Field(8, ge=1, le=1024, description="capped by the bundle's batch profile")
    max_wait_ms: float = Field(
        20.0,
        ge=0,
        le=60_000,
        description="longest wait for a fuller batch, only while more frames are queued or being "
        "decoded; a lone frame never waits",
    )
    uncertain_below: float = Field(0.5, ge=0.0, le=1.0, description="confidence under: uncertain")
    top_k: int = Field(3, ge=1, le=10)
    backend: Literal["auto", "onnxruntime", "tensorrt", "openvino"] = "auto"
    preprocess_device: Literal["auto", "cpu", "cuda"] = "auto"
    onnxruntime_cuda: bool = Field(False, description="use CUDAExecutionProvider when present")
    intra_op_threads: int | None = Field(None, ge=1, le=256, description="ONNX Runtime threads")
    intra_op_spinning: bool = Field(
        False, description="ONNX Runtime workers busy-wait (faster only on otherwise idle cores)"
    )
    inference_streams: int = Field(
        2,
        ge=1,
        le=64,
        description="CPU backends (ONNX Runtime, OpenVINO): a batch of two or more frames is split "
        "into this many parts run at once, each on its share of the threads; a lone frame runs on "
        "all threads. 2 measured fastest on 2 cores, bare and in the agent (docs/benchmarks.md); "
        "1: one run over all threads",
    )
    ready_queue: int = Field(32, ge=1, le=10_000, description="decoded frames waiting to batch")
    poison_after_attempts: int = Field(
        2,
        ge=1,
        le=100,
        description="a watched file the agent died in this many times while decoding it (a "
        "crash, or the watchdog killing a hung decoder) is quarantined as 'poison' at the next "
        "start instead of being tried again; 1 also quarantines the one file being decoded "
        "during a single unrelated crash",
    )


class AgentConfig(_Strict):
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)
    bundle: Path
    sources: list[SourceConfig] = Field(min_length=1)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    decode: DecodeSettings = Field(
        default_factory=DecodeSettings,
        description="this host's input limits; the pixels (stretch, FITS HDU/bands) follow the "
        "bundle, and decode.stretch/decode.fits, when given, must match it",
    )
    fields: FieldsConfig = Field(
        default_factory=FieldsConfig,
        description="wide fields (sources in mode fields): detection, filters, framing, colour",
    )
    quarantine_dir: Path = Path("/var/lib/galaxy-edge/quarantine")
    state_dir: Path = Field(Path("/var/lib/galaxy-edge"), description="ledger lives here")
    stats_interval_s: float = Field(30.0, gt=0)
    drain_timeout_s: float = Field(20.0, gt=0, description="SIGTERM: drain and flush within")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mqtt: MqttConfig = Field(default_factory=MqttConfig)

    @model_validator(mode="after")
    def _unique_source_names(self) -> AgentConfig:
        names = [s.display_name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dup)}")
        return self


# --- loading with line numbers -------------------------------------------------------------


def _node_lines(node: yaml.Node, prefix: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            _node_lines(value_node, path, out)
            out[path] = key_node.start_mark.line + 1  # the key's line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, (*prefix, i), out)


def _line_of(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


_PATH_FIELDS = (
    ("bundle",),
    ("quarantine_dir",),
    ("state_dir",),
    ("mqtt", "password_file"),
    ("mqtt", "outbox", "path"),
    ("mqtt", "tls", "ca_file"),
    ("mqtt", "tls", "cert_file"),
    ("mqtt", "tls", "key_file"),
)


def _resolve_relative(raw: dict[str, Any], base: Path) -> None:
    """Relative paths in a config file are relative to that file, not to the working directory."""
    for path in _PATH_FIELDS:
        holder: Any = raw
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(path[-1]), str):
            value = Path(holder[path[-1]]).expanduser()
            if not value.is_absolute():
                holder[path[-1]] = str(base / value)


def parse_config(text: str, origin: str = "<config>", base_dir: Path | None = None) -> AgentConfig:
    """Validate YAML text; raise :class:`ConfigError` listing every problem with its line."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{origin}{at}: not valid YAML: {exc.problem}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{origin}: not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict) or root is None:
        raise ConfigError([f"{origin}: expected a mapping of settings at the top level"])
    lines: dict[tuple[Any, ...], int] = {}
    _node_lines(root, (), lines)
    if base_dir is not None:
        _resolve_relative(raw, base_dir)
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        found: list[tuple[int, str]] = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(loc, lines)
            at = f"{origin}:{line}" if line is not None else origin
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see the example config)"
            elif err["type"] == "missing":
                msg = "required key is missing"
            found.append((line or 0, f"{at}: {where}: {msg}"))
        problems = [text for _, text in sorted(found, key=lambda item: item[0])]  # file order
        raise ConfigError(problems) from exc


def load_config(path: Path) -> AgentConfig:
    """Read and validate a YAML config file; relative paths in it are taken from its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"{path}: cannot read the config file ({exc.__class__.__name__})"]
        ) from exc
    return parse_config(text, origin=str(path), base_dir=path.resolve().parent)
