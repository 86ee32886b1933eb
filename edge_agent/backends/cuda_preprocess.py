"""Preprocessing on the GPU with the bundle's kernels (``preprocess.cubin`` / ``preprocess.ptx``).

The kernels (``build_engine/cuda/preprocess.cu``) implement :mod:`edge_agent.contract.preprocess` bit for
bit, one launch for a whole batch of frames of any sizes. A batch travels to the GPU in ONE
host-to-device copy of one staging buffer that holds, in this order, the frames' device
pointers, their heights, widths and row pitches, and then the frames' pixel rows
(:class:`StagingLayout`). The layout functions are pure NumPy, so they are tested on CPU hosts
and by ``scripts/gpu-check`` (which launches the same kernels through CuPy).

:class:`CudaPreprocessor` owns its buffers explicitly: one page-locked host staging buffer and
one device staging buffer, grown (never shrunk) to the largest batch seen and released by
:meth:`CudaPreprocessor.close`. The output buffer belongs to the caller (the TensorRT backend
passes its engine input). pycuda is imported only when a :class:`CudaPreprocessor` is created,
and every pycuda call goes through :func:`cuda_call`, which turns a failed CUDA status into a
:class:`~edge_agent.backends.base.BackendError` naming the driver call and the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge_agent.backends.base import BackendError
from edge_agent.contract.preprocess import ChannelOrder, PreprocessSpec, check_frame

log = logging.getLogger(__name__)

KERNELS: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "galaxy_preprocess_f32",
    np.dtype(np.float16): "galaxy_preprocess_f16",
}
THREADS = 256
ALIGN = 256  # every region of the staging buffer starts on a 256-byte boundary
# pycuda "prepared" argument format: 4 pointers, int bgr, int out_size, float scale,
# float offset, int crop_none, pointer out.
ARG_FORMAT = "PPPPiiffiP"
_MIN_STAGING = 1 << 20

T = TypeVar("T")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class StagingLayout:
    """Byte offsets of one batch inside one staging buffer (identical on host and device)."""

    count: int
    pointers_offset: int  # count x uint64: device address of each frame's first row
    heights_offset: int  # count x int32
    widths_offset: int  # count x int32
    pitches_offset: int  # count x int32: bytes from one row to the next (>= 3 * width)
    frame_offsets: tuple[int, ...]
    heights: tuple[int, ...]
    widths: tuple[int, ...]
    pitches: tuple[int, ...]
    nbytes: int


def staging_layout(shapes: Sequence[tuple[int, int]], row_align: int = 1) -> StagingLayout:
    """Lay out frames of ``(height, width)`` shapes; rows padded to ``row_align`` bytes."""
    if len(shapes) == 0:
        raise BackendError("cannot preprocess an empty batch")
    if row_align < 1:
        raise BackendError(f"row_align must be >= 1, got {row_align}")
    n = len(shapes)
    pointers = 0
    heights = _round_up(pointers + 8 * n, ALIGN)
    widths = _round_up(heights + 4 * n, ALIGN)
    pitches = _round_up(widths + 4 * n, ALIGN)
    cursor = _round_up(pitches + 4 * n, ALIGN)
    offsets, hs, ws, ps = [], [], [], []
    for h, w in shapes:
        if h < 1 or w < 1:
            raise BackendError(f"frame of {h}x{w} pixels has no area")
        pitch = _round_up(3 * w, row_align)
        offsets.append(cursor)
        hs.append(int(h))
        ws.append(int(w))
        ps.append(pitch)
        cursor = _round_up(cursor + h * pitch, ALIGN)
    if max(ps) * max(hs) >= 2**31:
        raise BackendError("a frame larger than 2 GiB cannot be preprocessed")
    return StagingLayout(
        count=n,
        pointers_offset=pointers,
        heights_offset=heights,
        widths_offset=widths,
        pitches_offset=pitches,
        frame_offsets=tuple(offsets),
        heights=tuple(hs),
        widths=tuple(ws),
        pitches=tuple(ps),
        nbytes=cursor,
    )


def fill_staging(
    dest: np.ndarray, layout: StagingLayout, frames: Sequence[np.ndarray], device_base: int
) -> None:
    """Write the metadata and pixel rows of ``frames`` into ``dest`` (1-D uint8, host side).

    ``device_base`` is the device address that ``dest[0]`` will be copied to: the frame
    pointers are absolute device addresses. Row padding bytes are left as they are.
    """
    if dest.dtype != np.uint8 or dest.ndim != 1 or not dest.flags.c_contiguous:
        raise BackendError("staging buffer must be a contiguous 1-D uint8 array")
    if dest.size < layout.nbytes:
        raise BackendError(f"staging buffer of {dest.size} bytes is smaller than {layout.nbytes}")
    if len(frames) != layout.count:
        raise BackendError(f"{len(frames)} frames for a layout of {layout.count}")
    n = layout.count
    meta = (
        (layout.pointers_offset, np.uint64, [device_base + off for off in layout.frame_offsets]),
        (layout.heights_offset, np.int32, layout.heights),
        (layout.widths_offset, np.int32, layout.widths),
        (layout.pitches_offset, np.int32, layout.pitches),
    )
    for offset, dtype, values in meta:
        size = np.dtype(dtype).itemsize * n
        dest[offset : offset + size].view(dtype)[:] = np.asarray(values, dtype=dtype)
    for i, frame in enumerate(frames):
        check_frame(frame)
        h, w = frame.shape[:2]
        if (h, w) != (layout.heights[i], layout.widths[i]):
            raise BackendError(
                f"frame {i} is {h}x{w}, the layout says {layout.heights[i]}x{layout.widths[i]}"
            )
        rows = np.ndarray(
            (h, w, 3),
            dtype=np.uint8,
            buffer=dest,
            offset=layout.frame_offsets[i],
            strides=(layout.pitches[i], 3, 1),
        )
        rows[...] = frame


def launch_geometry(count: int, out_size: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block): one thread per output pixel, one grid row per frame."""
    return (-(-(out_size * out_size) // THREADS), count, 1), (THREADS, 1, 1)


def kernel_args(
    layout: StagingLayout, device_base: int, frame_order: ChannelOrder, spec: PreprocessSpec
) -> tuple[int, int, int, int, int, int, float, float, int]:
    """The kernel's arguments but the output pointer, in the order of its signature."""
    return (
        device_base + layout.pointers_offset,
        device_base + layout.heights_offset,
        device_base + layout.widths_offset,
        device_base + layout.pitches_offset,
        1 if frame_order == "BGR" else 0,
        spec.input_size,
        float(np.float32(spec.scale)),
        float(np.float32(spec.offset)),
        1 if spec.crop == "none" else 0,
    )


def check_spec(spec: PreprocessSpec) -> None:
    """The kernels implement one transform; refuse a spec they would silently get wrong."""
    if (spec.interpolation, spec.channel_order, spec.layout) != ("bilinear", "RGB", "NCHW"):
        raise BackendError(
            f"the CUDA kernels implement bilinear RGB NCHW, the bundle asks for "
            f"{spec.interpolation} {spec.channel_order} {spec.layout}; rebuild the bundle"
        )


def _driver() -> Any:
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise BackendError(
            f"pycuda does not import ({exc}); install it on the device (pip install pycuda)"
        ) from exc
    return cuda


def cuda_call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a pycuda function; a failed CUDA status becomes a :class:`BackendError`.

    pycuda reports a failed status by raising ``pycuda.driver.Error`` (``LogicError``,
    ``LaunchError``, ``MemoryError``, ``RuntimeError``) whose text names the driver call and
    the error, e.g. ``cuModuleLoad failed: device kernel image is invalid``.
    """
    cuda = _driver()
    try:
        return fn(*args, **kwargs)
    except cuda.Error as exc:
        raise BackendError(f"{what}: {type(exc).__name__}: {exc}") from exc


class CudaPreprocessor:
    """The bundle's kernels, loaded in the current CUDA context, with their staging buffers.

    Not thread-safe; the caller makes its CUDA context current around every call.
    """

    def __init__(self, cubin: Path | None, ptx: Path | None, spec: PreprocessSpec) -> None:
        check_spec(spec)
        self.spec = spec
        self._cuda = _driver()
        self.module, self.source = self._load(cubin, ptx)
        self._functions: dict[np.dtype[Any], Any] = {}
        for dtype, name in KERNELS.items():
            function = cuda_call(f"{self.source}: kernel {name}", self.module.get_function, name)
            cuda_call(f"{name}: prepare", function.prepare, ARG_FORMAT)
            self._functions[dtype] = function
        self._host: np.ndarray | None = None
        self._device: Any = None
        self.capacity = 0

    def _load(self, cubin: Path | None, ptx: Path | None) -> tuple[Any, Path]:
        cuda = self._cuda
        if cubin is not None:
            try:
                return cuda.module_from_file(str(cubin)), cubin
            except cuda.Error as exc:
                if ptx is None:
                    raise BackendError(
                        f"{cubin}: does not load on this GPU ({type(exc).__name__}: {exc}) and the "
                        "bundle has no PTX; run build-engine on this device"
                    ) from exc
                # Not a downgrade of results: the PTX is the same kernel, compiled by the driver.
                log.warning(
                    "%s does not load on this GPU (%s); JIT-compiling %s instead", cubin, exc, ptx
                )
        if ptx is None:
            raise BackendError("the bundle names no preprocessing kernels; run build-engine again")
        return cuda_call(f"{ptx}: load (JIT)", cuda.module_from_file, str(ptx)), ptx

    def _reserve(self, nbytes: int, stream: Any) -> None:
        if nbytes <= self.capacity:
            return
        capacity = max(_MIN_STAGING, 1 << (nbytes - 1).bit_length())
        # The old buffers may still be read by work queued on the stream: let it finish.
        cuda_call("stream synchronize", stream.synchronize)
        self._free()
        self._host = cuda_call(
            "pinned host staging buffer", self._cuda.pagelocked_empty, capacity, np.uint8
        )
        self._device = cuda_call("device staging buffer", self._cuda.mem_alloc, capacity)
        self.capacity = capacity

    def enqueue(
        self,
        frames: Sequence[np.ndarray],
        frame_order: ChannelOrder,
        out: int,
        out_dtype: np.dtype[Any] | type[np.floating[Any]],
        stream: Any,
    ) -> None:
        """Queue the upload of ``frames`` and the kernel writing N x 3 x S x S at ``out``.

        Returns at once; the caller synchronises ``stream`` before it reads the output or
        calls again (the staging buffers are reused).
        """
        dtype = np.dtype(out_dtype)
        if dtype not in self._functions:
            raise BackendError(
                f"no preprocessing kernel writes {dtype}; the model input must be fp32 or fp16"
            )
        if frame_order not in ("RGB", "BGR"):
            raise BackendError(f"frame order must be RGB or BGR, got {frame_order!r}")
        for frame in frames:
            check_frame(frame)
        layout = staging_layout([f.shape[:2] for f in frames])
        self._reserve(layout.nbytes, stream)
        assert self._host is not None
        base = int(self._device)
        fill_staging(self._host, layout, frames, base)
        cuda_call(
            "upload frames",
            self._cuda.memcpy_htod_async,
            self._device,
            self._host[: layout.nbytes],
            stream,
        )
        grid, block = launch_geometry(layout.count, self.spec.input_size)
        cuda_call(
            f"launch {KERNELS[dtype]}",
            self._functions[dtype].prepared_async_call,
            grid[:2],
            block,
            stream,
            *kernel_args(layout, base, frame_order, self.spec),
            out,
        )

    def _free(self) -> None:
        if self._device is not None:
            cuda_call("free device staging buffer", self._device.free)
        allocation: Any = self._host.base if self._host is not None else None
        if allocation is not None and hasattr(allocation, "free"):
            cuda_call("free pinned staging buffer", allocation.free)
        self._device = None
        self._host = None
        self.capacity = 0

    def close(self) -> None:
        """Release the staging buffers (the module is unloaded with its context)."""
        self._free()
