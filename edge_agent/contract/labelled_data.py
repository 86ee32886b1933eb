"""Readers of labelled galaxy images, shared by training and by build-engine's calibration.

Three sources, one interface (:class:`LabelledImages`): ``Galaxy10_DECals.h5`` (keys ``images``
and ``ans``), a folder with one sub-folder per class, and a labels CSV (``file,label[,name,...]``
with files relative to the CSV). Labels are always the OFFICIAL Galaxy10 DECaLS ids; a folder name
is mapped through :func:`edge_agent.contract.classes.class_id`, never through its sort order.

Torch-free on purpose: the edge device's calibration code reads the same sets without torch.
Image files go through the agent's decoder (:mod:`edge_agent.contract.decode`), so every stage
sees the same pixels for the same file, FITS and 16-bit data included.
Images are read lazily (the h5 holds 3.5 GB of pixels); only their hashes are kept, to find
pixel-identical images with conflicting labels, a known defect of the h5, which are excluded and
counted rather than silently kept.
"""

from __future__ import annotations

import csv
import hashlib
import os
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.contract.classes import CLASS_NAMES, NUM_CLASSES, class_id, class_name
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.contract.errors import GalaxyEdgeError, UnknownClassError

# Which files of a class folder are images; what they hold is then read from their magic bytes.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_SUFFIXES += (".fits", ".fit", ".fts", ".fz", ".npy")
H5_SUFFIXES = (".h5", ".hdf5")
_HASH_CHUNK = 256  # h5 images hashed per read: bounded memory, few I/O calls


class LabelledDataError(GalaxyEdgeError):
    """A labelled image set that cannot be read: the message names the file and the problem."""


def read_image_rgb(path: Path, decode: DecodeConfig | None = None) -> np.ndarray:
    """Decode an image file to uint8 H x W x 3 RGB with the agent's own decoder.

    :func:`edge_agent.contract.decode.decode_file` (type from the magic bytes, header checks,
    deep data stretched by ``decode.stretch``, FITS) with ``decode`` (default: the defaults the
    agent uses), so training, calibration, the gate and ``evaluate`` see the pixels the device
    sees for the same file.
    """
    from edge_agent.contract.decode import DecodeError, decode_file  # loads OpenCV: not for h5

    try:
        return decode_file(path, decode or DecodeConfig())
    except DecodeError as exc:
        raise LabelledDataError(f"{path}: not a readable image ({exc.reason}: {exc})") from exc
    except OSError as exc:
        raise LabelledDataError(f"{path}: cannot read image file ({exc.strerror})") from exc


def pixel_hash(image: np.ndarray) -> str:
    """Digest of the decoded pixels and their shape: equal for pixel-identical images only."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _select(count: int, limit: int | None) -> np.ndarray:
    """Indices of the items to use: all, or ``limit`` spread evenly over the set.

    Even spacing rather than the first ``limit`` items because the h5 and the shared sample are
    sorted by class: the first items would all be one class.
    """
    if limit is None or limit >= count:
        return np.arange(count, dtype=np.int64)
    if limit < 1:
        raise LabelledDataError(f"limit must be at least 1, got {limit}")
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


class LabelledImages(ABC):
    """A fixed, indexable set of (uint8 H x W x 3 RGB image, official class id) pairs.

    ``labels[i]`` is the class id of item ``i``. Items with conflicting duplicates are already
    excluded; :attr:`conflicts_excluded` says how many.
    """

    kind: str = ""

    def __init__(self, path: Path, limit: int | None) -> None:
        self.path = Path(path)
        self.limit = limit
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self.conflicts_excluded = 0
        self.duplicates_same_label = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        return self._read(index), int(self.labels[index])

    @abstractmethod
    def _read(self, index: int) -> np.ndarray:
        """Pixels of item ``index`` (after exclusion) as uint8 H x W x 3 RGB."""

    @abstractmethod
    def ref(self, index: int) -> str:
        """Where item ``index`` comes from (a file, or an h5 row), for messages and reports."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for metrics and manifests: source, size, per-class counts."""
        counts = Counter(int(v) for v in self.labels)
        return {
            "kind": self.kind,
            "path": str(self.path),
            "images": len(self),
            "limit": self.limit,
            "class_counts": {CLASS_NAMES[c]: counts.get(c, 0) for c in range(NUM_CLASSES)},
            "conflicts_excluded": self.conflicts_excluded,
            "duplicates_same_label": self.duplicates_same_label,
        }

    def _exclude_conflicts(self, hashes: Sequence[str], labels: np.ndarray) -> np.ndarray:
        """Positions to keep: drop every member of a pixel-identical group with several labels."""
        groups: dict[str, list[int]] = defaultdict(list)
        for pos, digest in enumerate(hashes):
            groups[digest].append(pos)
        drop: set[int] = set()
        for members in groups.values():
            if len(members) < 2:
                continue
            if len({int(labels[m]) for m in members}) > 1:
                drop.update(members)
            else:
                self.duplicates_same_label += len(members) - 1
        self.conflicts_excluded = len(drop)
        return np.array([p for p in range(len(hashes)) if p not in drop], dtype=np.int64)

    def _check_not_empty(self) -> None:
        if len(self) == 0:
            raise LabelledDataError(f"{self.path}: no labelled images left to use (empty set)")


class H5Images(LabelledImages):
    """``Galaxy10_DECals.h5``: ``images`` (N, H, W, 3) uint8 and ``ans`` (N,) class ids."""

    kind = "h5"

    def __init__(self, path: Path, limit: int | None = None, check_conflicts: bool = True) -> None:
        super().__init__(path, limit)
        self._file: Any = None
        self._pid = -1
        images, ans = self._datasets()
        all_labels = np.asarray(ans[:]).astype(np.int64).reshape(-1)
        bad = all_labels[(all_labels < 0) | (all_labels >= NUM_CLASSES)]
        if bad.size:
            raise LabelledDataError(
                f"{self.path}: key 'ans' holds {bad.size} value(s) outside 0..{NUM_CLASSES - 1} "
                f"(e.g. {int(bad[0])}); not a Galaxy10 DECaLS file"
            )
        rows = _select(len(all_labels), limit)
        labels = all_labels[rows]
        if check_conflicts and len(rows):
            hashes: list[str] = []
            for start in range(0, len(rows), _HASH_CHUNK):
                chunk = rows[start : start + _HASH_CHUNK]
                lo, hi = int(chunk[0]), int(chunk[-1]) + 1
                if hi - lo == len(chunk):
                    block = self._read_rows(images, lo, hi)
                else:  # rows spread out by ``limit``: read only those, never the span between
                    block = np.stack(
                        [self._read_rows(images, int(r), int(r) + 1)[0] for r in chunk]
                    )
                hashes.extend(pixel_hash(image) for image in block)
            keep = self._exclude_conflicts(hashes, labels)
            rows, labels = rows[keep], labels[keep]
        self.rows = rows
        self.labels = labels
        self._check_not_empty()

    def _read_rows(self, images: Any, lo: int, hi: int) -> np.ndarray:
        try:
            return np.asarray(images[lo:hi])
        except (OSError, RuntimeError, ValueError) as exc:
            raise LabelledDataError(
                f"{self.path}: cannot read images[{lo}:{hi}] ({exc}); the file is corrupt"
            ) from exc

    def _datasets(self) -> tuple[Any, Any]:
        """Open the file (once per process: h5py handles must not cross a fork) and check it."""
        if self._file is not None and self._pid == os.getpid():
            return self._file["images"], self._file["ans"]
        import h5py

        if not self.path.is_file():
            raise LabelledDataError(f"{self.path}: no such h5 file")
        try:
            handle = h5py.File(self.path, "r")
        except OSError as exc:
            raise LabelledDataError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        missing = [k for k in ("images", "ans") if k not in handle]
        if missing:
            found = ", ".join(sorted(handle.keys())) or "none"
            handle.close()
            raise LabelledDataError(
                f"{self.path}: missing key(s) {', '.join(missing)} (found: {found}); "
                "expected Galaxy10_DECals.h5 with 'images' and 'ans'"
            )
        images, ans = handle["images"], handle["ans"]
        problem = None
        if images.ndim != 4 or images.shape[3] != 3:
            problem = f"'images' has shape {images.shape}, expected (N, H, W, 3)"
        elif images.dtype != np.uint8:
            problem = f"'images' has dtype {images.dtype}, expected uint8"
        elif ans.ndim != 1 or ans.shape[0] != images.shape[0]:
            problem = f"'ans' has shape {ans.shape}, expected ({images.shape[0]},)"
        if problem:
            handle.close()
            raise LabelledDataError(f"{self.path}: {problem}")
        self._file, self._pid = handle, os.getpid()
        return images, ans

    def _read(self, index: int) -> np.ndarray:
        images, _ = self._datasets()
        row = int(self.rows[index])
        return self._read_rows(images, row, row + 1)[0]

    def ref(self, index: int) -> str:
        return f"{self.path}[{int(self.rows[index])}]"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, -1
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None


class FileImages(LabelledImages):
    """Images stored one per file, with their ids known from a folder name or a CSV."""

    def __init__(
        self,
        path: Path,
        files: list[Path],
        labels: list[int],
        limit: int | None,
        check_conflicts: bool,
        kind: str,
        decode: DecodeConfig | None = None,
    ) -> None:
        super().__init__(path, limit)
        self.kind = kind
        self.decode = decode or DecodeConfig()
        rows = _select(len(files), limit)
        chosen = [files[r] for r in rows]
        label_array = np.asarray([labels[r] for r in rows], dtype=np.int64)
        if check_conflicts and chosen:
            keep = self._exclude_conflicts(
                [pixel_hash(read_image_rgb(f, self.decode)) for f in chosen], label_array
            )
            chosen, label_array = [chosen[k] for k in keep], label_array[keep]
        self.files = chosen
        self.labels = label_array
        self._check_not_empty()

    def _read(self, index: int) -> np.ndarray:
        return read_image_rgb(self.files[index], self.decode)

    def describe(self) -> dict[str, Any]:
        """The summary of :meth:`LabelledImages.describe`, with the decoding settings used."""
        return {**super().describe(), "decode": self.decode.model_dump(mode="json")}

    def ref(self, index: int) -> str:
        return str(self.files[index])


def _folder_listing(root: Path) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise LabelledDataError(
            f"{root}: no class sub-folders (expected e.g. {root}/barred-spiral/)"
        )
    for sub in subdirs:
        try:
            cid = class_id(sub.name)
        except UnknownClassError as exc:
            raise LabelledDataError(f"{sub}: unknown class folder: {exc}") from exc
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                files.append(f)
                labels.append(cid)
    if not files:
        raise LabelledDataError(
            f"{root}: class folders hold no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files, labels


def _csv_listing(csv_path: Path) -> tuple[list[Path], list[int]]:
    base = csv_path.parent
    files: list[Path] = []
    labels: list[int] = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            if "file" not in columns or "label" not in columns:
                raise LabelledDataError(
                    f"{csv_path}: needs columns 'file' and 'label' (found: {', '.join(columns) or 'none'})"
                )
            for line, row in enumerate(reader, start=2):
                where = f"{csv_path}:{line}"
                raw = (row.get("label") or "").strip()
                try:
                    label = int(raw)
                    class_name(label)
                except (ValueError, UnknownClassError) as exc:
                    raise LabelledDataError(
                        f"{where}: label {raw!r} is not an official class id 0..{NUM_CLASSES - 1}"
                    ) from exc
                name = (row.get("name") or "").strip()
                if name:
                    try:
                        named = class_id(name)
                    except UnknownClassError as exc:
                        raise LabelledDataError(f"{where}: {exc}") from exc
                    if named != label:
                        raise LabelledDataError(
                            f"{where}: name {name!r} is class {named}, but label says {label}"
                        )
                file = base / (row.get("file") or "").strip()
                if not file.is_file():
                    raise LabelledDataError(f"{where}: image {file} does not exist")
                files.append(file)
                labels.append(label)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelledDataError(f"{csv_path}: cannot read labels CSV ({exc})") from exc
    if not files:
        raise LabelledDataError(f"{csv_path}: no rows (empty set)")
    return files, labels


def open_labelled(
    path: Path | str,
    limit: int | None = None,
    check_conflicts: bool = True,
    decode: DecodeConfig | None = None,
) -> LabelledImages:
    """Open a labelled set by what ``path`` is: an ``.h5`` file, a ``.csv`` file or a folder.

    Image files are decoded as the agent decodes them, with ``decode``: a model's
    :class:`~edge_agent.contract.decode_config.DecodeSpec` within limits
    (``config.decode.decoder()``), so a run reads the pixels its bundle will (default: the
    default spec, which runs made before the spec travelled used); the h5 holds decoded 8-bit
    pixels already.

    ``limit`` keeps that many items spread evenly over the set (for smoke runs and calibration).
    ``check_conflicts`` reads every image once to find pixel-identical images with different
    labels; it is on by default because the h5 has such pairs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        return H5Images(path, limit, check_conflicts)
    if not path.exists():
        raise LabelledDataError(
            f"{path}: does not exist (expected an .h5, a labels .csv or a folder)"
        )
    if path.is_dir():
        files, labels = _folder_listing(path)
        return FileImages(path, files, labels, limit, check_conflicts, "folder", decode)
    if suffix == ".csv":
        files, labels = _csv_listing(path)
        return FileImages(path, files, labels, limit, check_conflicts, "csv", decode)
    raise LabelledDataError(
        f"{path}: unsupported labelled data (expected an .h5 file, a labels .csv or a folder)"
    )
