"""Links and special files in the watched folder: refused with an ``errors`` message, never read.

Each kind is tried twice: present before the start (found by the rescan) and appearing while the
agent runs (created in place, or renamed in from elsewhere), with good frames around them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

import cv2
from agent_testkit import drop_file, galaxy_like, write_png
from pipeline_testkit import FolderPipeline


def png_bytes(seed: int) -> bytes:
    _ok, png = cv2.imencode(".png", galaxy_like(seed))
    return png.tobytes()


def make_specials(
    folder: Path, tag: str, outside_image: Path, staging: Path
) -> list[socket.socket]:
    """A link to /etc/hostname, a link to an image outside, a moved-in link, a FIFO, a folder,
    a socket and (as root) a character device, all named like images."""
    (folder / f"{tag}-etc.png").symlink_to("/etc/hostname")
    (folder / f"{tag}-outside.png").symlink_to(outside_image)
    (staging / f"{tag}-moved.png").symlink_to(outside_image)
    os.replace(staging / f"{tag}-moved.png", folder / f"{tag}-moved.png")
    os.mkfifo(folder / f"{tag}-fifo.png")
    (folder / f"{tag}-dir.png").mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(folder / f"{tag}-sock.png"))
    with contextlib.suppress(PermissionError):  # not root: the other kinds still run
        os.mknod(folder / f"{tag}-dev.png", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    return [sock]


def test_links_and_special_files_are_refused_and_good_frames_flow(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    outside = write_png(tmp_path / "outside.png", galaxy_like(9))
    staging = tmp_path / "staging"
    staging.mkdir()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop_file(inbox, "good-before.png", png_bytes(1))
    keep = make_specials(inbox, "before", outside, staging)
    specials_before = {p.name for p in inbox.iterdir()} - {"good-before.png"}
    try:
        with FolderPipeline(tmp_path, tiny_bundle) as rig:
            rig.wait(classified=1, errors=len(specials_before))
            keep += make_specials(inbox, "running", outside, staging)
            drop_file(inbox, "good-running.png", png_bytes(2))
            specials = {p.name for p in inbox.iterdir() if p.name.endswith(".png")} - {
                "good-before.png",
                "good-running.png",
            }
            specials |= specials_before
            rig.wait(classified=2, errors=len(specials))
            assert rig.pipeline.alive()
            errors = rig.by_name("errors")
            classified = set(rig.by_name("classifications"))
    finally:
        for s in keep:
            s.close()
    assert classified == {"good-before.png", "good-running.png"}  # the outside image: never
    assert set(errors) == specials
    for name, error in errors.items():
        assert error["reason"] == "not_regular_file", error
        if name.endswith("-dir.png"):  # a folder is never moved: left in place, said so
            assert error["quarantined_to"] is None and "left in place" in error["detail"]
            assert (inbox / name).is_dir()
            continue
        where = Path(error["quarantined_to"])
        assert where.is_relative_to(rig.quarantine_dir) and not (inbox / name).exists()
        kind = os.lstat(where).st_mode  # moved as it was: the link itself, the FIFO itself
        assert not stat.S_ISREG(kind)
    assert "symbolic link to /etc/hostname" in errors["before-etc.png"]["detail"]
    assert "FIFO" in errors["running-fifo.png"]["detail"]
    assert outside.is_file()  # the link's target is untouched
