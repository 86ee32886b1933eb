"""Settings of the catalogue writer (strict: an unknown key is an error, as in the agent)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

_LEVEL = re.compile(r"^[^/#+\0]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerSettings(_Strict):
    host: str = Field("localhost", description="MQTT broker host")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port")
    username: str | None = Field(None, description="broker user name")
    password_file: Path | None = Field(None, description="file holding the broker password")
    client_id: str = Field(
        "galaxy-catalogue-1",
        min_length=1,
        max_length=128,
        description="stable per writer: the broker keeps this session while the writer is down",
    )
    session_expiry_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        le=0xFFFFFFFF,
        description="how long the broker queues messages for a writer that is away (seconds)",
    )
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keep-alive (seconds)")
    topic_prefix: str = Field("galaxy-edge", description="the agents' mqtt.topic_prefix")
    shared_group: str | None = Field(
        None,
        description="share the result stream with the other writers of this group "
        "($share/<group>/...); None: this writer receives everything",
    )
    extra_kinds: list[str] = Field(
        default_factory=list,
        description="further JSON topic kinds to store whole (e.g. per-frame summaries)",
    )
    receive_maximum: int = Field(
        1000, ge=1, le=65535, description="unacknowledged messages the broker may send at once"
    )

    @field_validator("shared_group", "client_id")
    @classmethod
    def _one_level(cls, value: str | None) -> str | None:
        if value is not None and not _LEVEL.match(value):
            raise ValueError("must not contain / + # or NUL")
        return value

    @field_validator("extra_kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        for kind in value:
            if not _LEVEL.match(kind):
                raise ValueError(f"kind {kind!r} must be one topic level")
        return value


class WriterSettings(_Strict):
    database: str = Field(
        "sqlite:///catalogue.sqlite3",
        description="sqlite:///PATH (default) or postgresql://user@host/dbname",
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="MQTT side")
    batch_max: int = Field(500, ge=1, le=100_000, description="messages per transaction at most")
    batch_wait_ms: float = Field(
        50.0, ge=0, le=10_000, description="wait this long for a fuller batch"
    )
    http: str | None = Field(
        None, description="serve the live page on HOST:PORT (e.g. 127.0.0.1:8080); None: no page"
    )
