"""Writing a bundle atomically, and the key that says which build a bundle is.

A bundle is assembled in a hidden staging directory beside the target (same filesystem), its
manifest written there with every file's sha256, and only then renamed into place. A failure at
any step removes the staging directory, so the target is either the old bundle or the complete
new one, never half of either. An existing target is replaced only if it is a bundle (it holds a
``manifest.json``) or empty: ``--out`` pointed at the wrong directory must not delete it.
Single files the builders write outside a bundle (a plan, a timing cache) go through
:func:`write_file_atomic`, so a reader never sees half of one.

The cache key is computed from the manifest rather than stored in it, so it needs no schema
change: (source ONNX sha, backend, precision, batch profile, TensorRT version, GPU, compute
capability, DLA core, preprocessing spec). Two bundles with the same key are the same build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from build_engine.errors import BundleError, UsageError
from edge_agent.contract.manifest import MANIFEST_NAME, Manifest, write_manifest


def cache_key(manifest: Manifest) -> str:
    """sha256 of what determines a build's output; equal keys mean interchangeable bundles."""
    trt = manifest.tensorrt
    fields = {
        "source_onnx_sha256": manifest.source_onnx_sha256,
        "backend": manifest.backend,
        "precision": manifest.precision,
        "batch": manifest.batch.model_dump(),
        "tensorrt_version": trt.version if trt else None,
        "gpu_name": trt.gpu_name if trt else None,
        "compute_capability": trt.compute_capability if trt else None,
        "dla_core": trt.dla_core if trt else None,
        "preprocess": manifest.preprocess.model_dump(mode="json"),
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_output_dir(out_dir: Path) -> None:
    """Fail early (before minutes of building) when ``out_dir`` cannot become a bundle."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise UsageError(
            f"{out_dir}: not empty and not a bundle (no {MANIFEST_NAME}); refusing to replace it, "
            "choose an empty or new --out directory"
        )
    parent = _existing_ancestor(out_dir.absolute().parent)
    if not parent.is_dir():
        raise UsageError(
            f"{parent}: is a file, cannot create {out_dir} under it; choose another --out"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{parent}: not writable, cannot create {out_dir}; choose another --out")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def _created_parents(path: Path) -> Iterator[None]:
    """Create the missing parents of ``path``; remove the ones created here if the body fails."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(
            f"{path}: cannot create directory ({exc.strerror}); choose another --out"
        ) from exc
    try:
        yield
    except BaseException:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:
                break
        raise


def write_bundle(out_dir: Path, files: Mapping[str, Path], manifest: Manifest) -> Manifest:
    """Copy ``files`` (bundle name -> source path) and the manifest into ``out_dir`` atomically.

    Returns the manifest as written (with its file hashes).
    """
    out_dir = Path(out_dir).absolute()
    check_output_dir(out_dir)
    with _created_parents(out_dir.parent):
        try:
            staging = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent)
            )
        except OSError as exc:
            raise BundleError(
                f"{out_dir.parent}: cannot write here ({exc.strerror}); choose another --out"
            ) from exc
        try:
            for name, source in files.items():
                if Path(name).name != name or name == MANIFEST_NAME:
                    raise BundleError(f"bundle file name {name!r} is not a plain file name")
                shutil.copyfile(source, staging / name)
            written = write_manifest(staging, manifest)
            # mkdtemp/mkstemp make owner-only entries; the agent may run as another user.
            staging.chmod(0o755)
            for entry in staging.iterdir():
                entry.chmod(0o644)
            _swap_into_place(staging, out_dir)
        except OSError as exc:
            raise BundleError(
                f"{out_dir}: cannot write bundle ({exc}); check space and permissions"
            ) from exc
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return written


def write_file_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``; an old bundle there is moved aside and removed after."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old.rmdir()
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
