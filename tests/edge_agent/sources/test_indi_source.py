"""The indi:// source against a real indiserver with Debian's CCD and telescope simulators."""

from __future__ import annotations

import base64
import io
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from indi_server import IndiServer, require_indiserver, wait_until

from edge_agent.config import IndiSourceConfig, SourceConfig
from edge_agent.contract.decode import decode_bytes
from edge_agent.contract.decode_config import DecodeConfig, StretchConfig
from edge_agent.sources.base import Frame, FrameHub, SourceError
from edge_agent.sources.indi import IndiSource, parse_indi_uri, unpack_blob
from edge_agent.sources.indi_protocol import (
    IndiConnection,
    IndiElement,
    IndiProtocolError,
    IndiStreamParser,
    new_vector,
)

CCD = "CCD Simulator"
MB = 1 << 20


# --- the protocol, without a server ---------------------------------------------------------


def _blob_xml(payload: bytes, size: int | None = None, fmt: str = ".fits") -> bytes:
    text = base64.b64encode(payload).decode()
    body = "\n".join(text[i : i + 72] for i in range(0, len(text), 72))
    return (
        f'<setBLOBVector device="{CCD}" name="CCD1" state="Ok" timestamp="2026-12-01T10:00:00">'
        f'<oneBLOB name="CCD1" size="{size if size is not None else len(payload)}" '
        f'format="{fmt}">{body}</oneBLOB></setBLOBVector>'
    ).encode()


def test_parser_reassembles_a_blob_split_across_reads() -> None:
    got: list[IndiElement] = []
    parser = IndiStreamParser(got.append, max_blob_bytes=MB)
    payload = bytes(range(256)) * 40
    xml = b'<message device="x" message="hello"/>' + _blob_xml(payload)
    for i in range(0, len(xml), 97):
        parser.feed(xml[i : i + 97])
    assert [e.tag for e in got] == ["message", "setBLOBVector"]
    assert got[1].members[0].blob == payload and got[1].members[0].attrs["format"] == ".fits"


def test_parser_keeps_only_the_announced_len_of_a_blob() -> None:
    """INDI 1.9's fpack path sends its whole 1 MiB buffer; ``len`` says how much is valid."""
    got: list[IndiElement] = []
    parser = IndiStreamParser(got.append, max_blob_bytes=MB)
    parser.feed(_blob_xml(b"A" * 100 + b"\0" * 900).replace(b"format=", b'len="100" format='))
    parser.feed(_blob_xml(b"B" * 10).replace(b"format=", b'len="50" format='))
    assert got[0].members[0].blob == b"A" * 100
    assert got[1].members[0].blob is None and "50 announced" in (got[1].members[0].skipped or "")


def test_parser_skips_a_blob_above_the_cap_without_keeping_it() -> None:
    got: list[IndiElement] = []
    parser = IndiStreamParser(got.append, max_blob_bytes=1000)
    parser.feed(_blob_xml(b"x" * 5000))  # declared size above the cap
    parser.feed(_blob_xml(b"y" * 5000, size=10))  # lies about its size: caught while streaming
    assert [m.blob for e in got for m in e.members] == [None, None]
    assert all("1000" in (m.skipped or "") for e in got for m in e.members)
    assert parser._text == []  # nothing of the skipped text is held


def test_parser_rejects_what_is_not_xml_and_bad_base64() -> None:
    got: list[IndiElement] = []
    parser = IndiStreamParser(got.append, max_blob_bytes=MB)
    parser.feed(_blob_xml(b"ok").replace(b"b2s=", b"b2s*"))
    assert got[0].members[0].blob is None and "base64" in (got[0].members[0].skipped or "")
    with pytest.raises(IndiProtocolError, match="not INDI XML"):
        IndiStreamParser(got.append, max_blob_bytes=MB).feed(b"<a></b>")


def test_new_vector_escapes_names_and_values() -> None:
    xml = new_vector("Text", 'Cam "A"', "X", [("V", "a<b&c")])
    assert xml == (
        b'<newTextVector device=\'Cam "A"\' name="X"><oneText name="V">a&lt;b&amp;c'
        b"</oneText></newTextVector>\n"
    )


def test_uri_and_blob_unpacking() -> None:
    assert parse_indi_uri("indi://127.0.0.1:7625/CCD%20Simulator") == ("127.0.0.1", 7625, CCD)
    assert parse_indi_uri("indi://obs/Cam")[1] == 7624
    for bad in ("indi://host", "indi:///Cam", "indi://host:x/Cam"):
        with pytest.raises(SourceError):
            parse_indi_uri(bad)
    fits_bytes = b"SIMPLE  =" + b" " * 2871
    assert unpack_blob(zlib.compress(fits_bytes), ".fits.z", MB) == fits_bytes
    assert unpack_blob(fits_bytes, ".fits", MB) == fits_bytes
    with pytest.raises(SourceError, match="inflates past"):
        unpack_blob(zlib.compress(b"\0" * 10 * MB), ".fits.z", MB)
    with pytest.raises(SourceError, match="does not inflate"):
        unpack_blob(b"not zlib", ".fits.z", MB)


def test_indi_settings_only_on_indi_sources() -> None:
    SourceConfig(uri="indi://localhost/Cam", indi=IndiSourceConfig(exposure_s=1))
    with pytest.raises(ValueError, match="indi:// sources only"):
        SourceConfig(uri="dir:///x", indi=IndiSourceConfig())


# --- a real server ----------------------------------------------------------------------


@pytest.fixture
def indi(tmp_path: Path) -> Iterator[IndiServer]:
    require_indiserver()
    server = IndiServer(tmp_path / "indi")
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _source(server: IndiServer, settings: IndiSourceConfig, hub: FrameHub) -> IndiSource:
    queue = hub.queue("cam", 8, "block")
    return IndiSource(
        "cam", queue, ("fits",), f"indi://127.0.0.1:{server.port}/CCD%20Simulator",
        settings, max_bytes=64 * MB,
    )  # fmt: skip


def _frames(hub: FrameHub, n: int, timeout: float) -> list[Frame]:
    out: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        frame = hub.get(0.2)
        if frame is not None:
            out.append(frame)
            hub.release()
    return out


class _Client:
    """Another INDI client (acquisition software): connects and drives the camera itself."""

    def __init__(self, port: int) -> None:
        self.props: dict[tuple[str, str], IndiElement] = {}
        self.values: dict[tuple[str, str], dict[str, str]] = {}  # latest, defs and sets merged
        self.conn = IndiConnection("127.0.0.1", port, self._on, max_blob_bytes=MB)
        self.conn.send(b'<getProperties version="1.7"/>\n')

    def _on(self, element: IndiElement) -> None:
        if element.tag.startswith("def"):
            self.props[(element.device, element.name)] = element
        if element.tag[:3] in ("def", "set"):
            self.values.setdefault((element.device, element.name), {}).update(element.values())

    def pump_until(self, predicate: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.conn.pump(0.1)
            if callable(predicate) and predicate():
                return True
        return False

    def connect_devices(self) -> None:
        for device in (CCD, "Telescope Simulator"):
            self.conn.send(new_vector("Switch", device, "CONNECTION", [("CONNECT", "On")]))
        assert self.pump_until(lambda: (CCD, "CCD_EXPOSURE") in self.props, 60)

    def send(self, data: bytes) -> None:
        self.conn.send(data)
        self.conn.pump(0.2)


def test_drive_mode_takes_exposures_and_they_decode(indi: IndiServer) -> None:
    hub = FrameHub()
    source = _source(indi, IndiSourceConfig(exposure_s=0.2), hub)
    source.start()
    try:
        frames = _frames(hub, 2, timeout=60)
        health = source.health()
    finally:
        source.stop()
    assert len(frames) == 2, health
    assert frames[0].frame_ref != frames[1].frame_ref
    assert frames[0].metadata["indi_device"] == CCD
    assert frames[0].data is not None and frames[0].data.startswith(b"SIMPLE  =")
    rgb = decode_bytes(frames[0].data, DecodeConfig())
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] > 100
    assert health["camera_online"] is True and health["last_error"] is None


def test_listen_mode_classifies_what_other_software_takes(indi: IndiServer) -> None:
    hub = FrameHub()
    source = _source(indi, IndiSourceConfig(), hub)
    source.start()
    client = _Client(indi.port)
    try:
        client.connect_devices()
        assert wait_until(source.connected.is_set, 30)
        time.sleep(0.5)
        assert _frames(hub, 1, timeout=0.5) == []  # listening: it starts no exposure itself
        client.send(new_vector("Switch", CCD, "CCD_COMPRESSION", [("INDI_ENABLED", "On")]))
        client.send(new_vector("Number", CCD, "CCD_EXPOSURE", [("CCD_EXPOSURE_VALUE", "0.1")]))
        frames = _frames(hub, 1, timeout=60)
    finally:
        source.stop()
        client.conn.close()
    assert len(frames) == 1
    assert frames[0].metadata["format"].startswith(".fits")
    assert frames[0].data is not None
    assert decode_bytes(frames[0].data, DecodeConfig()).shape[2] == 3


def test_directory_mode_serves_our_own_frame_pixel_for_pixel(
    indi: IndiServer, tmp_path: Path
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 60000, size=(120, 160), dtype=np.uint16)
    hdu = fits.PrimaryHDU(pixels)
    hdu.header["PIXSIZE1"] = 5.2
    hdu.header["PIXSIZE2"] = 5.2
    hdu.writeto(folder / "field-001.fits")
    client = _Client(indi.port)
    client.connect_devices()
    toggle, location = (CCD, "CCD_DIRECTORY_TOGGLE"), (CCD, "CCD_DIRECTORY_LOCATION")
    # defined a moment after the camera connects: a value sent before that is dropped
    assert client.pump_until(lambda: toggle in client.props and location in client.props, 60)
    client.send(new_vector("Text", CCD, "CCD_DIRECTORY_LOCATION", [("LOCATION", str(folder))]))
    client.send(new_vector("Switch", CCD, "CCD_DIRECTORY_TOGGLE", [("INDI_ENABLED", "On")]))
    assert client.pump_until(lambda: client.values[toggle].get("INDI_ENABLED") == "On", 60)
    hub = FrameHub()
    source = _source(indi, IndiSourceConfig(exposure_s=0.1), hub)
    source.start()
    try:
        frames = _frames(hub, 1, timeout=60)
    finally:
        source.stop()
        client.conn.close()
    assert len(frames) == 1 and frames[0].data is not None
    with fits.open(io.BytesIO(frames[0].data)) as hdus:
        served = np.asarray(hdus[0].data)
    np.testing.assert_array_equal(served.astype(np.int64), pixels.astype(np.int64))
    linear = DecodeConfig(stretch=StretchConfig(method="linear"))
    np.testing.assert_array_equal(
        decode_bytes(frames[0].data, linear),
        decode_bytes((folder / "field-001.fits").read_bytes(), linear),
    )


def test_a_lost_server_is_reported_and_the_source_reconnects(indi: IndiServer) -> None:
    hub = FrameHub()
    problems: list[tuple[str, str]] = []
    source = _source(indi, IndiSourceConfig(exposure_s=0.2), hub)
    source.on_problem = lambda reason, detail: problems.append((reason, detail))
    source.start()
    try:
        assert len(_frames(hub, 1, timeout=60)) == 1
        indi.stop()
        assert wait_until(lambda: source.health()["last_error"] is not None, 30)
        assert wait_until(lambda: not source.connected.is_set(), 30)  # set just after the error
        assert problems and problems[0][0] == "source_unavailable"
        assert source._thread is not None and source._thread.is_alive()  # never a crash
        indi.start()  # same port
        assert len(_frames(hub, 1, timeout=60)) == 1
        assert source.health()["last_error"] is None and source.reconnects >= 1
    finally:
        source.stop()
    assert len(problems) <= 3  # one line per distinct problem, not one per retry


def test_an_unreachable_server_is_a_reported_problem_not_a_crash(tmp_path: Path) -> None:
    from indi_server import free_port

    hub = FrameHub()
    queue = hub.queue("cam", 4, "block")
    source = IndiSource(
        "cam", queue, ("fits",), f"indi://127.0.0.1:{free_port()}/Cam", IndiSourceConfig(),
        max_bytes=MB,
    )  # fmt: skip
    source.start()
    try:
        assert wait_until(lambda: source.health()["last_error"] is not None, 5)
        assert "is indiserver running?" in str(source.health()["last_error"])
    finally:
        source.stop()
    assert source._thread is not None and not source._thread.is_alive()
