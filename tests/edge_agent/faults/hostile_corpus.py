"""A generated corpus of hostile inputs for the watched folder and the ``frames`` topic.

Every entry is made here from a seed (nothing is downloaded): zero-byte files, random bytes,
real images cut short, header bombs (PNG, TIFF, JPEG, FITS and NPY headers that claim far more
pixels or bytes than the file holds), wrong dtypes and shapes, links, FIFOs, device nodes,
folders, and names that break careless code (unicode, spaces, newlines, leading dashes, bytes
that are not UTF-8, 250-byte names). Good frames with odd names are part of it too: a name is
never a reason to reject a frame.

Entries are made in a staging folder on the same file system as the inbox and renamed in, as a
receiver would, so every kind of entry (a FIFO, a link) arrives the same way.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from agent_testkit import galaxy_like

# The limits the hostile scenario configures (decode.max_bytes, decode.max_pixels): small, so
# that a bomb is rejected long before it could cost memory, and the memory bound stays tight.
MAX_BYTES = 4 * 2**20
MAX_PIXELS = 4_000_000


@dataclass(frozen=True)
class Entry:
    """One input: ``name`` as it lands in the inbox (bytes: any file name), what it is, good or not."""

    name: bytes
    kind: str
    good: bool

    @property
    def display(self) -> str:
        return os.fsdecode(self.name)


# --- encoders -------------------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_header_bomb(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    body = zlib.compress(b"\x00" * 65536, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def png_idat_length_bomb(seed: int) -> bytes:
    """A real PNG whose IDAT length field claims 0x7FFFFFF0 bytes (issue 7, defect 2)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".png", pixels)[1].tobytes())
    at = data.index(b"IDAT") - 4
    data[at : at + 4] = struct.pack(">I", 0x7FFFFFF0)
    return bytes(data)


def png_zlib_bomb(width: int = 2000, height: int = 2000) -> bytes:
    """Some 12 KB of IDAT that inflate to width x height x 3 bytes (12 MB at 2000 x 2000)."""
    raw = (b"\x00" * (1 + width * 3)) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


def tiff_header_bomb(
    width: int, height: int, samples: int = 1, bits: int = 8, big_counts: bool = False
) -> bytes:
    """A little-endian TIFF of ~200 bytes whose one IFD claims ``width`` x ``height`` pixels."""
    count = 0x7FFFFFF0 if big_counts else 64
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1 if samples == 1 else 2),
        (273, 4, 1, 8 + 2 + 12 * 10 + 4),  # strip offset: right after the IFD
        (277, 3, 1, samples),
        (278, 4, 1, height),  # one strip
        (279, 4, 1, count),
        (284, 3, 1, 1),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, n, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, n) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + b"\x00" * 64


def jpeg_header_bomb(width: int, height: int, marker: int = 0xC0) -> bytes:
    """A real JPEG whose frame header (SOF) is rewritten to claim ``width`` x ``height``."""
    data = bytearray(cv2.imencode(".jpg", galaxy_like(3, 32, 32))[1].tobytes())
    i = 2
    while data[i + 1] < 0xC0 or data[i + 1] > 0xC2:
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 1] = marker
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def fits_bytes(cards: list[str], data: bytes = b"") -> bytes:
    header = "".join(c.ljust(80) for c in [*cards, "END"]).encode("ascii")
    header += b" " * (-len(header) % 2880)
    return header + data + b"\x00" * (-len(data) % 2880)


def fits_header_bomb(axes: tuple[int, ...], bitpix: int = -64) -> bytes:
    """A FITS header claiming an enormous array, with one data block instead of gigabytes."""
    cards = [
        "SIMPLE  =                    T",
        f"BITPIX  = {bitpix:>20}",
        f"NAXIS   = {len(axes):>20}",
    ]
    cards += [f"NAXIS{i + 1:<3}= {n:>20}" for i, n in enumerate(axes)]
    return fits_bytes(cards, b"\x00" * 2880)


def fits_image(array: np.ndarray) -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(array).writeto(buf)
    return buf.getvalue()


def fits_table_only() -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(buf)
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_header_bomb(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\x00" * 128


def good_image(fmt: str, seed: int, side: int = 48) -> bytes:
    rgb = galaxy_like(seed, side, side)
    if fmt in ("png", "jpeg", "tiff"):
        return cv2.imencode({"png": ".png", "jpeg": ".jpg", "tiff": ".tiff"}[fmt], rgb[:, :, ::-1])[
            1
        ].tobytes()
    if fmt == "npy":
        return npy_bytes(rgb)
    return fits_image(rgb[:, :, 0].astype(np.float32))


# --- the corpus -----------------------------------------------------------------------------


def bad_files(seed: int = 7) -> list[tuple[str, bytes]]:
    """(kind, bytes) of every hostile regular file (names are given by :func:`build`)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, bytes]] = []
    for ext in ("png", "jpg", "tif", "fits", "npy", "txt", "", "jpeg"):
        out.append((f"zero-byte .{ext}", b""))
    for size in (1, 7, 100, 2880, 10_000, 200_000):
        for _ in range(8):
            out.append(
                (f"random {size} bytes", b"\x00" + rng.bytes(size - 1) if size > 1 else b"\x00")
            )
    magics = {
        "png": b"\x89PNG\r\n\x1a\n",
        "jpeg": b"\xff\xd8\xff",
        "tiff": b"II*\x00",
        "npy": b"\x93NUMPY",
        "fits": b"SIMPLE  =",
    }
    for fmt, magic in magics.items():
        for size in (16, 300, 2880 * 2, 50_000):
            body = magic + rng.bytes(size)
            if fmt == "fits":
                body = body[: len(body) - len(body) % 2880] if len(body) >= 2880 else body
            out.append((f"{fmt} magic + random", body))
    for fmt in ("png", "jpeg", "tiff", "npy", "fits"):
        whole = good_image(fmt, 11, side=96)
        for frac in (0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.97):
            cut = max(1, int(len(whole) * frac))
            if fmt == "fits" and cut % 2880 == 0:
                cut -= 1
            out.append((f"{fmt} truncated at {frac:.0%}", whole[:cut]))
    bombs: list[tuple[str, bytes]] = [
        ("png IHDR 100000x100000", png_header_bomb(100_000, 100_000)),
        ("png IHDR 65535x65535 16-bit RGBA", png_header_bomb(65_535, 65_535, 16, 6)),
        ("png IHDR 2^31-1 x 1", png_header_bomb(2**31 - 1, 1)),
        ("png IHDR 0x0", png_header_bomb(0, 0)),
        ("png IDAT length 0x7FFFFFF0", png_idat_length_bomb(1)),
        ("png IDAT length 0x7FFFFFF0 (2)", png_idat_length_bomb(2)),
        ("tiff 100000x100000 (210 bytes)", tiff_header_bomb(100_000, 100_000)),
        ("tiff 60000x60000 RGB 16-bit", tiff_header_bomb(60_000, 60_000, samples=3, bits=16)),
        ("tiff strip byte count 0x7FFFFFF0", tiff_header_bomb(64, 64, big_counts=True)),
        ("tiff 1 x 2^31-1", tiff_header_bomb(1, 2**31 - 1)),
        (
            "bigtiff header, no IFD",
            b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 2**62) + b"\x00" * 64,
        ),
        ("jpeg SOF0 65500x65500", jpeg_header_bomb(65_500, 65_500)),
        ("jpeg SOF2 65500x65500 (progressive)", jpeg_header_bomb(65_500, 65_500, 0xC2)),
        ("jpeg SOF0 0x0", jpeg_header_bomb(0, 0)),
        ("jpeg SOF0 4000x4000 (over max_pixels)", jpeg_header_bomb(4000, 4000)),
        ("fits 100000x100000 float64", fits_header_bomb((100_000, 100_000))),
        ("fits 2^31-1 x 2 int64", fits_header_bomb((2**31 - 1, 2), 64)),
        ("fits cube 64x64x1000000", fits_header_bomb((64, 64, 1_000_000), 16)),
        ("fits 3000x3000 int16 (over max_pixels)", fits_header_bomb((3000, 3000), 16)),
        ("npy (100000, 100000, 3) u1", npy_header_bomb((100_000, 100_000, 3))),
        ("npy (2^40,) f8", npy_header_bomb((2**40,), "<f8")),
        ("npy (65536, 65536) f4", npy_header_bomb((65_536, 65_536), "<f4")),
        ("npy negative shape", npy_header_bomb((-1, 64))),
        (
            "npy header length beyond the file",
            b"\x93NUMPY\x01\x00" + struct.pack("<H", 60000) + b"{",
        ),
        ("png above decode.max_bytes", png_header_bomb(64, 64) + b"\x00" * (MAX_BYTES + 1)),
        ("png zlib bomb 2001x2000 (over max_pixels)", png_zlib_bomb(2001, 2000)),
        (
            "png of 2000 text chunks, no IDAT",
            b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + png_chunk(b"tEXt", b"k\x00v") * 2000
            + png_chunk(b"IEND", b""),
        ),
        ("fits BITPIX 13", fits_header_bomb((16, 16), 13)),
    ]
    out += bombs
    wrong: list[tuple[str, bytes]] = [
        ("npy complex64", npy_bytes(np.zeros((32, 32), np.complex64))),
        ("npy object (a pickle)", npy_bytes(np.array([{"a": 1}, None], dtype=object))),
        ("npy unicode strings", npy_bytes(np.array([["ab"] * 8] * 8))),
        ("npy bytes", npy_bytes(np.zeros((8, 8), "S4"))),
        ("npy structured", npy_bytes(np.zeros((8, 8), [("a", "<i4"), ("b", "<f4")]))),
        ("npy datetime64", npy_bytes(np.zeros((8, 8), "datetime64[s]"))),
        ("npy 1-D", npy_bytes(np.zeros(64, np.uint8))),
        ("npy 4-D", npy_bytes(np.zeros((2, 2, 8, 8), np.uint8))),
        ("npy 7 channels", npy_bytes(np.zeros((16, 16, 7), np.uint8))),
        ("npy 0x0", npy_bytes(np.zeros((0, 0), np.uint8))),
        ("npy 0x16", npy_bytes(np.zeros((0, 16), np.uint8))),
        ("npy 5 planes first", npy_bytes(np.zeros((5, 16, 16), np.uint8))),
        ("npy 0-D", npy_bytes(np.array(3.0))),
        ("fits 1-D", fits_image(np.zeros(64, np.float32))),
        ("fits 4-D", fits_image(np.zeros((2, 2, 8, 8), np.float32))),
        ("fits cube of 5 planes", fits_image(np.zeros((5, 16, 16), np.float32))),
        ("fits table only", fits_table_only()),
        (
            "fits primary without data",
            fits_bytes(
                [
                    "SIMPLE  =                    T",
                    "BITPIX  =                    8",
                    "NAXIS   =                    0",
                ]
            ),
        ),
        ("fits NAXIS1=0", fits_header_bomb((0, 16), 8)),
        ("fits header without END", b"SIMPLE  =                    T".ljust(2880, b" ")),
        ("text named as an image", b"Hello, I am not an image.\n" * 40),
        ("gif", b"GIF89a" + rng.bytes(200)),
        ("bmp", b"BM" + rng.bytes(200)),
    ]
    out += wrong
    return out


ODD_NAMES: list[str] = [
    "-rf.png",
    "--help.png",
    "- .png",
    "with space.png",
    "  leading and trailing  .png",
    "new\nline.png",
    "tab\there.png",
    "carriage\rreturn.png",
    "银河 galaxie ünïcødé.png",
    "emoji 🌌.png",
    "rtl \u202egnp.exe.png",
    "quote'dou\"ble.png",
    "semi;colon$(touch x)`y`.png",
    "back\\slash.png",
    "glob*?[a].png",
    "percent%s%n%x.png",
]
# Linux file names are bytes: these are not UTF-8 (Python shows them with surrogate escapes).
NON_UTF8_NAMES: list[bytes] = [b"latin1-\xe9t\xe9.png", b"bytes-\xff\xfe.png", b"\xc3(.png"]
# Near NAME_MAX (255 bytes): whatever the agent derives from such a name must still fit.
LONG_NAMES: list[bytes] = [("L" * 245 + ".png").encode(), ("长" * 80 + ".png").encode()]


def build(staging: Path, outside: Path, seed: int = 7) -> tuple[list[Entry], list[Entry]]:
    """Create the corpus in ``staging``; returns (bad entries, good entries with odd names).

    ``outside`` is a folder beside the inbox that links may point into.
    """
    staging.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    bad: list[Entry] = []
    good: list[Entry] = []

    def put(name: bytes, data: bytes, kind: str, is_good: bool) -> None:
        (Path(os.fsdecode(staging)) / os.fsdecode(name)).write_bytes(data)
        (good if is_good else bad).append(Entry(name, kind, is_good))

    exts = ["png", "jpg", "tiff", "fits", "npy", "dat"]
    for i, (kind, data) in enumerate(bad_files(seed)):
        put(f"bad-{i:03}.{exts[i % len(exts)]}".encode(), data, kind, False)

    # The same good frame under names that break careless code; and bad ones under such names.
    for i, text in enumerate(ODD_NAMES):
        name = os.fsencode(text)
        put(name, good_image("png", 100 + i), "good frame, odd name", True)
        put(b"bad " + name, b"\x00not an image" * (i + 1), "bad frame, odd name", False)
    # Within the cap, so a good frame, but 12 MB inflated from ~12 KB: the cap bounds its cost.
    put(b"zlib-bomb-2000x2000.png", png_zlib_bomb(), "good: 4 Mpixel PNG of ~12 KB", True)
    for i, fmt in enumerate(("jpeg", "tiff", "npy", "fits")):
        put(
            f"good-{fmt}-named-wrong.png".encode(),
            good_image(fmt, 200 + i),
            f"good {fmt} named .png",
            True,
        )

    # Not regular files: each must be refused without being opened (a FIFO would block a reader).
    target = outside / "outside.png"
    target.write_bytes(good_image("png", 300))
    fifo_outside = outside / "fifo"
    os.mkfifo(fifo_outside)
    links = {
        b"link-etc-hostname.png": "/etc/hostname",
        b"link-outside-image.png": str(target),
        b"link-dangling.png": str(outside / "nowhere.png"),
        b"link-to-dir.png": str(outside),
        b"link-loop.png": "link-loop.png",
        b"link-dev-zero.fits": "/dev/zero",
        b"link-dev-urandom.png": "/dev/urandom",
        b"link-fifo.png": str(fifo_outside),
        b"link-proc-self-mem.npy": "/proc/self/mem",
        b"link-relative-sibling.png": "../outside/outside.png",
    }
    for name, to in links.items():
        os.symlink(to, staging / os.fsdecode(name))
        bad.append(Entry(name, f"symlink to {to}", False))
    for name in (b"fifo.png", b"fifo.fits", b"fifo"):
        os.mkfifo(staging / os.fsdecode(name))
        bad.append(Entry(name, "FIFO", False))
    for name in (b"dir.png", b"dir.fits"):
        (staging / os.fsdecode(name)).mkdir()
        (staging / os.fsdecode(name) / "inner.png").write_bytes(good_image("png", 400))
        bad.append(Entry(name, "directory", False))
    if os.geteuid() == 0:  # device nodes need CAP_MKNOD
        for name, minor in ((b"dev-null.png", 3), (b"dev-zero.fits", 5)):
            os.mknod(staging / os.fsdecode(name), 0o600 | stat.S_IFCHR, os.makedev(1, minor))
            bad.append(Entry(name, "character device", False))
    sparse = staging / "sparse-10GiB.fits"
    with sparse.open("wb") as f:
        f.truncate(10 * 2**30)  # no blocks on disk, 10 GiB by its size
    bad.append(Entry(b"sparse-10GiB.fits", "sparse file of 10 GiB", False))
    return bad, good


def mqtt_frames(seed: int = 9) -> tuple[list[tuple[str, bytes, str]], list[tuple[str, bytes]]]:
    """(frame_ref, payload, kind) of hostile messages for the ``frames`` topic, and good ones."""
    rng = np.random.default_rng(seed)
    bad = [
        ("mqtt-empty", b"", "empty payload"),
        (
            "mqtt-oversized",
            b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_BYTES + 1024),
            "above decode.max_bytes",
        ),
        ("mqtt-oversized-random", rng.bytes(2 * MAX_BYTES), "random, twice decode.max_bytes"),
        ("mqtt-random", rng.bytes(5000), "random bytes"),
        ("mqtt-text", b'{"not": "an image"}', "JSON instead of an image"),
        ("mqtt-png-truncated", good_image("png", 500)[:300], "truncated PNG"),
        ("mqtt-png-bomb", png_header_bomb(100_000, 100_000), "PNG header bomb"),
        ("mqtt-png-idat-bomb", png_idat_length_bomb(3), "PNG IDAT length bomb"),
        ("mqtt-tiff-bomb", tiff_header_bomb(100_000, 100_000), "TIFF header bomb"),
        ("mqtt-jpeg-bomb", jpeg_header_bomb(65_500, 65_500), "JPEG header bomb"),
        ("mqtt-fits-bomb", fits_header_bomb((100_000, 100_000)), "FITS header bomb"),
        ("mqtt-npy-bomb", npy_header_bomb((100_000, 100_000, 3)), "NPY header bomb"),
        ("mqtt-npy-pickle", npy_bytes(np.array([None], dtype=object)), "NPY pickle"),
        ("mqtt-npy-complex", npy_bytes(np.zeros((8, 8), np.complex64)), "NPY complex"),
        ("mqtt-fits-cube", fits_image(np.zeros((5, 8, 8), np.float32)), "FITS cube of 5 planes"),
    ]
    good = [
        (f"mqtt-good-{i:02}", good_image(("png", "jpeg", "npy", "fits")[i % 4], 600 + i))
        for i in range(20)
    ]
    return bad, good
