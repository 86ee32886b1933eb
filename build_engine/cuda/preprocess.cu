// Fused, batched inference preprocessing: uint8 HWC frames -> model input NCHW (fp32 or fp16).
//
// One launch handles a whole batch of frames of any sizes. Each thread computes one output
// pixel (all three channels) of one frame: grid = (ceil(S*S / blockDim.x), N).
//
// This kernel is a bit-for-bit port of the CPU reference, edge_agent/contract/preprocess.py
// (preprocess_frame and sample_grid); keep the two in step:
//   crop   center_square: side = min(h, w), corner ((w - side) / 2, (h - side) / 2) in integers;
//          none (crop_none != 0): the whole frame.
//   resize bilinear, half-pixel centres: pos = (o + 0.5) * (n_in / S) - 0.5, clamped to
//          [0, n_in - 1]; lo = floor(pos), hi = min(lo + 1, n_in - 1), w = pos - lo; float32.
//   value  top = a * (1 - wx) + b * wx; bottom likewise; v = top * (1 - wy) + bottom * wy;
//          y = v * scale + offset; channels written in RGB order (BGR frames are swapped).
// Every float operation uses an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, __fsub_rn,
// __fdiv_rn) so that the compiler cannot contract a multiply and an add into an FMA or use an
// approximate division: the result then equals NumPy's float32 arithmetic exactly, whatever
// the nvcc flags (-use_fast_math, -fmad). fp16 output is the fp32 value rounded to nearest even,
// which is what NumPy's astype(float16) does.
//
// Frames are given as an array of device pointers (one per frame) to pitched uint8 rows, with
// per-frame heights, widths and pitches (bytes per row, >= 3 * width). Output is contiguous
// N x 3 x S x S.

#include <cuda_fp16.h>

namespace {

// Sampling along one axis, exactly as edge_agent.contract.preprocess.sample_grid.
struct Axis {
    int lo;
    int hi;
    float w;  // weight of hi
};

__device__ __forceinline__ Axis sample_axis(int o, int n_in, int n_out) {
    const float scale = __fdiv_rn(static_cast<float>(n_in), static_cast<float>(n_out));
    float pos = __fsub_rn(__fmul_rn(__fadd_rn(static_cast<float>(o), 0.5f), scale), 0.5f);
    pos = fminf(fmaxf(pos, 0.0f), static_cast<float>(n_in - 1));
    Axis a;
    a.lo = static_cast<int>(floorf(pos));
    a.hi = min(a.lo + 1, n_in - 1);
    a.w = __fsub_rn(pos, static_cast<float>(a.lo));
    return a;
}

__device__ __forceinline__ float lerp_ref(float a, float b, float w) {
    // a * (1 - w) + b * w, two roundings then a rounded sum, as NumPy computes it.
    return __fadd_rn(__fmul_rn(a, __fsub_rn(1.0f, w)), __fmul_rn(b, w));
}

template <typename T>
__device__ __forceinline__ T to_out(float v);

template <>
__device__ __forceinline__ float to_out<float>(float v) {
    return v;
}

template <>
__device__ __forceinline__ __half to_out<__half>(float v) {
    return __float2half_rn(v);
}

template <typename T>
__device__ __forceinline__ void preprocess_pixel(const unsigned char* const* __restrict__ frames,
                                                 const int* __restrict__ heights,
                                                 const int* __restrict__ widths,
                                                 const int* __restrict__ pitches, int bgr,
                                                 int out_size, float scale, float offset,
                                                 int crop_none, T* __restrict__ out) {
    const int n = blockIdx.y;
    const int plane = out_size * out_size;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= plane) {
        return;
    }
    const int oy = idx / out_size;
    const int ox = idx - oy * out_size;

    const int h = __ldg(heights + n);
    const int w = __ldg(widths + n);
    const int pitch = __ldg(pitches + n);
    const unsigned char* __restrict__ frame = frames[n];

    int x0 = 0;
    int y0 = 0;
    int cw = w;
    int ch = h;
    if (!crop_none) {
        const int side = min(h, w);
        x0 = (w - side) / 2;
        y0 = (h - side) / 2;
        cw = side;
        ch = side;
    }

    const Axis ax = sample_axis(ox, cw, out_size);
    const Axis ay = sample_axis(oy, ch, out_size);

    const unsigned char* __restrict__ row_top =
        frame + static_cast<size_t>(y0 + ay.lo) * static_cast<size_t>(pitch);
    const unsigned char* __restrict__ row_bottom =
        frame + static_cast<size_t>(y0 + ay.hi) * static_cast<size_t>(pitch);
    const int xl = (x0 + ax.lo) * 3;
    const int xh = (x0 + ax.hi) * 3;

    T* __restrict__ dst = out + static_cast<size_t>(n) * 3 * plane + idx;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int src_c = bgr ? 2 - c : c;
        const float tl = static_cast<float>(__ldg(row_top + xl + src_c));
        const float tr = static_cast<float>(__ldg(row_top + xh + src_c));
        const float bl = static_cast<float>(__ldg(row_bottom + xl + src_c));
        const float br = static_cast<float>(__ldg(row_bottom + xh + src_c));
        const float top = lerp_ref(tl, tr, ax.w);
        const float bottom = lerp_ref(bl, br, ax.w);
        const float v = lerp_ref(top, bottom, ay.w);
        dst[static_cast<size_t>(c) * plane] = to_out<T>(__fadd_rn(__fmul_rn(v, scale), offset));
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256)
    galaxy_preprocess_f32(const unsigned char* const* __restrict__ frames,
                          const int* __restrict__ heights, const int* __restrict__ widths,
                          const int* __restrict__ pitches, int bgr, int out_size, float scale,
                          float offset, int crop_none, float* __restrict__ out) {
    preprocess_pixel<float>(frames, heights, widths, pitches, bgr, out_size, scale, offset,
                            crop_none, out);
}

extern "C" __global__ void __launch_bounds__(256)
    galaxy_preprocess_f16(const unsigned char* const* __restrict__ frames,
                          const int* __restrict__ heights, const int* __restrict__ widths,
                          const int* __restrict__ pitches, int bgr, int out_size, float scale,
                          float offset, int crop_none, __half* __restrict__ out) {
    preprocess_pixel<__half>(frames, heights, widths, pitches, bgr, out_size, scale, offset,
                             crop_none, out);
}
