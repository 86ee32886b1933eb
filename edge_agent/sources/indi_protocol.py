"""A small client of the INDI protocol (XML over TCP, protocol version 1.7), stdlib only.

An INDI server (``indiserver``) speaks a stream of XML elements with no root element: property
definitions (``defNumberVector``, ``defSwitchVector``, ...), updates (``setNumberVector``,
``setBLOBVector``, ...), ``delProperty`` and ``message``. A client asks for the properties with
``getProperties``, says which BLOBs it wants with ``enableBLOB`` and changes values with
``newXXXVector``. See the INDI white paper (Downey, "INDI: Instrument-Neutral Distributed
Interface") for the grammar.

The stream is parsed incrementally with expat, so a camera image (a BLOB of tens of megabytes,
base64) never sits in memory more than once in encoded and once in decoded form, and a BLOB
larger than the configured cap is skipped while it streams, never buffered. Each complete
top-level element reaches the caller as an :class:`IndiElement`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
import xml.parsers.expat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from edge_agent.sources.base import SourceError

PROTOCOL_VERSION = "1.7"


class IndiProtocolError(SourceError):
    """The server sent something that is not INDI XML (the connection is dropped)."""


@dataclass
class IndiMember:
    """One member of a vector: ``oneNumber``/``defNumber``, ``oneBLOB``... with its text."""

    tag: str
    attrs: dict[str, str]
    text: str = ""
    blob: bytes | None = None  # decoded bytes of a oneBLOB
    skipped: str | None = None  # why a oneBLOB's bytes were not kept


@dataclass
class IndiElement:
    """A complete top-level element of the stream (a vector, ``message`` or ``delProperty``)."""

    tag: str
    attrs: dict[str, str]
    members: list[IndiMember] = field(default_factory=list)

    @property
    def device(self) -> str:
        return self.attrs.get("device", "")

    @property
    def name(self) -> str:
        return self.attrs.get("name", "")

    def values(self) -> dict[str, str]:
        """Member name to its text (numbers and switches as the server wrote them)."""
        return {m.attrs.get("name", ""): m.text.strip() for m in self.members}


class IndiStreamParser:
    """Feeds bytes, calls ``on_element`` for each complete top-level element.

    BLOB payloads are accumulated base64 text, capped at ``max_blob_bytes`` decoded bytes (the
    ``size``/``enclen`` attributes are checked first, then the text as it arrives).
    """

    def __init__(self, on_element: Callable[[IndiElement], None], max_blob_bytes: int) -> None:
        self.on_element = on_element
        self.max_blob_bytes = max_blob_bytes
        self._parser = xml.parsers.expat.ParserCreate()
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._parser.CharacterDataHandler = self._chars
        self._parser.buffer_text = True
        self._depth = 0
        self._element: IndiElement | None = None
        self._member: IndiMember | None = None
        self._text: list[str] = []
        self._text_len = 0
        # The stream has no root element: give expat one, so that it parses element after element.
        self._parser.Parse(b"<indi-stream>", False)

    def feed(self, data: bytes) -> None:
        try:
            self._parser.Parse(data, False)
        except xml.parsers.expat.ExpatError as exc:
            raise IndiProtocolError(f"not INDI XML ({exc})") from exc

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth == 2:
            self._element = IndiElement(tag, dict(attrs))
        elif self._depth == 3 and self._element is not None:
            self._member = IndiMember(tag, dict(attrs))
            self._text, self._text_len = [], 0
            if tag == "oneBLOB":
                declared = _int_attr(attrs, "size")
                if declared is not None and declared > self.max_blob_bytes:
                    self._member.skipped = (
                        f"{declared} bytes, above the cap of {self.max_blob_bytes} "
                        "(decode.max_bytes)"
                    )

    def _chars(self, data: str) -> None:
        member = self._member
        if member is None or self._depth != 3 or member.skipped is not None:
            return
        self._text_len += len(data)
        if member.tag == "oneBLOB" and self._text_len * 3 // 4 > self.max_blob_bytes + 3:
            member.skipped = f"more than {self.max_blob_bytes} bytes (decode.max_bytes)"
            self._text = []
            return
        if member.tag != "oneBLOB" and self._text_len > 65536:
            return  # a text member has no business being this long: keep its start only
        self._text.append(data)

    def _end(self, tag: str) -> None:
        if self._depth == 3 and self._member is not None and self._element is not None:
            member = self._member
            text = "".join(self._text)
            self._text = []
            if member.tag == "oneBLOB":
                if member.skipped is None:
                    try:
                        member.blob = base64.b64decode("".join(text.split()), validate=True)
                    except (binascii.Error, ValueError) as exc:
                        member.skipped = f"BLOB is not valid base64 ({exc})"
                    length = _int_attr(member.attrs, "len")
                    if member.blob is not None and length is not None:
                        # ``len`` is the BLOB's true length: INDI 1.9's fpack path sends its
                        # whole output buffer (1 MiB) with only the first ``len`` bytes valid.
                        if length > len(member.blob):
                            member.skipped = f"BLOB of {len(member.blob)} bytes, {length} announced"
                            member.blob = None
                        else:
                            member.blob = member.blob[:length]
            else:
                member.text = text
            self._element.members.append(member)
            self._member = None
        elif self._depth == 2 and self._element is not None:
            element, self._element = self._element, None
            self.on_element(element)
        self._depth -= 1


def _int_attr(attrs: dict[str, str], name: str) -> int | None:
    try:
        return int(attrs[name])
    except (KeyError, ValueError):
        return None


def new_vector(kind: str, device: str, name: str, members: Iterable[tuple[str, str]]) -> bytes:
    """``<newXXXVector>`` XML setting ``members`` (name, value) of property ``name``.

    ``kind`` is ``Number``, ``Switch`` or ``Text``.
    """
    body = "".join(
        f"<one{kind} name={quoteattr(m)}>{escape(str(v))}</one{kind}>" for m, v in members
    )
    return (
        f"<new{kind}Vector device={quoteattr(device)} name={quoteattr(name)}>{body}"
        f"</new{kind}Vector>\n"
    ).encode()


def get_properties(device: str | None = None) -> bytes:
    dev = f" device={quoteattr(device)}" if device else ""
    return f'<getProperties version="{PROTOCOL_VERSION}"{dev}/>\n'.encode()


def enable_blob(device: str, mode: str = "Also", name: str | None = None) -> bytes:
    """Ask for BLOBs of ``device`` (``Also``: with the other traffic; ``Never`` stops them)."""
    prop = f" name={quoteattr(name)}" if name else ""
    return f"<enableBLOB device={quoteattr(device)}{prop}>{mode}</enableBLOB>\n".encode()


class IndiConnection:
    """One TCP connection to an INDI server, read by :meth:`pump` in the caller's thread."""

    def __init__(
        self,
        host: str,
        port: int,
        on_element: Callable[[IndiElement], None],
        *,
        max_blob_bytes: int,
        timeout_s: float = 5.0,
    ) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise SourceError(
                f"cannot connect to the INDI server at {host}:{port} ({exc.strerror or exc}); "
                "is indiserver running?"
            ) from exc
        self.parser = IndiStreamParser(on_element, max_blob_bytes)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise SourceError(f"INDI server connection lost while sending ({exc})") from exc

    def pump(self, timeout_s: float) -> bool:
        """Read what arrives within ``timeout_s``; ``False`` when the server closed the stream."""
        try:
            self.sock.settimeout(timeout_s)
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except OSError as exc:
            raise SourceError(f"INDI server connection lost ({exc})") from exc
        if not data:
            return False
        self.parser.feed(data)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
