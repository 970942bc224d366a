// Bilinear upsampling: argument checks and the per-axis source-tap math shared by the
// CPU kernels (bilinear/cpu.cpp), the GPU kernels (bilinear/gpu.h) and deconvolution's
// separable CPU path.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/tensor.h"

namespace fcn_kernels {

// ---------------------------------------------------------------------------
// Bilinear (linear along one axis) source taps, bit-compatible with ATen's
// area_pixel_compute_scale / area_pixel_compute_source_index (UpSample.h).
// acc_t is the op-math type (float for half/bfloat16/float, double for double):
// computing in the same type as ATen makes floor() land on the same index.
// ---------------------------------------------------------------------------

// `scale` <= 0 means "not given" (the output size alone defines the ratio).
template <typename acc_t>
FK_HD acc_t linear_ratio(int64_t in, int64_t out, bool align_corners, double scale) {
  if (align_corners) {
    return out > 1 ? static_cast<acc_t>(in - 1) / static_cast<acc_t>(out - 1) : acc_t(0);
  }
  return scale > 0. ? static_cast<acc_t>(1.0 / scale)
                    : static_cast<acc_t>(in) / static_cast<acc_t>(out);
}

// idx_t: int64_t on the CPU; the GPU kernels use int (spatial sizes are far below 2^31).
template <typename acc_t, typename idx_t = int64_t>
struct LinearTap {
  idx_t i0, i1;  // the two source indices (equal at the last row/column)
  acc_t l0, l1;  // their weights, l0 + l1 == 1
};

template <typename acc_t, typename idx_t = int64_t>
FK_HD LinearTap<acc_t, idx_t> linear_tap(acc_t ratio, idx_t o, idx_t in, idx_t out,
                                         bool align_corners) {
  LinearTap<acc_t, idx_t> t;
  if (in == out) {  // identity along this axis, as ATen's CPU kernel special-cases
    t.i0 = t.i1 = o;
    t.l0 = acc_t(1);
    t.l1 = acc_t(0);
    return t;
  }
  acc_t src = align_corners ? ratio * static_cast<acc_t>(o)
                            : ratio * (static_cast<acc_t>(o) + acc_t(0.5)) - acc_t(0.5);
  if (src < acc_t(0)) src = acc_t(0);
  idx_t i0 = static_cast<idx_t>(src);  // src >= 0: truncation == floor
  if (i0 > in - 1) i0 = in - 1;
  acc_t l1 = src - static_cast<acc_t>(i0);
  if (l1 > acc_t(1)) l1 = acc_t(1);
  t.i0 = i0;
  t.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  t.l1 = l1;
  t.l0 = acc_t(1) - l1;
  return t;
}

// Backward as a gather: output index o reads sources i0(o) and i1(o), and i0 is
// non-decreasing in o, so the outputs that read source i form the contiguous range
// [first o with i0(o) >= i-1, first o with i0(o) > i). Binary search keeps this exact
// (it evaluates the forward formula) without tables.
template <typename acc_t>
FK_HD int64_t linear_first_output(acc_t ratio, int64_t target, int64_t in, int64_t out,
                                  bool align_corners) {
  int64_t lo = 0, hi = out;  // first o in [0, out] with i0(o) >= target
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (linear_tap<acc_t>(ratio, mid, in, out, align_corners).i0 >= target) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Weight with which output o reads source i (0 if it does not).
template <typename acc_t>
FK_HD acc_t linear_weight(const LinearTap<acc_t>& t, int64_t i) {
  acc_t w = acc_t(0);
  if (t.i0 == i) w += t.l0;
  if (t.i1 == i) w += t.l1;
  return w;
}

inline void check_bilinear(const at::Tensor& x, at::IntArrayRef output_size, const char* name) {
  check_float4d(x, name);
  TORCH_CHECK_VALUE(output_size.size() == 2, "output_size must have 2 elements");
  TORCH_CHECK_VALUE(output_size[0] > 0 && output_size[1] > 0, "output_size must be positive, got ",
                    output_size);
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, name,
                    " must have non-empty spatial dimensions, got ", x.sizes());
  constexpr int64_t lim = int64_t(1) << 31;  // the GPU kernels index rows/columns in int
  TORCH_CHECK_VALUE(
      x.size(2) < lim && x.size(3) < lim && output_size[0] < lim && output_size[1] < lim,
      "bilinear_upsample: spatial sizes must be below 2^31, got ", x.sizes(), " -> ", output_size);
}

inline void check_bilinear_backward(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  TORCH_CHECK_VALUE(input_size.size() == 4, "input_size must have 4 elements");
  check_bilinear(grad_output, {input_size[2], input_size[3]}, "grad_output");
  TORCH_CHECK_VALUE(grad_output.size(0) == input_size[0] && grad_output.size(1) == input_size[1],
                    "grad_output batch/channels ", grad_output.sizes(), " do not match input_size ",
                    input_size);
}

}  // namespace fcn_kernels
