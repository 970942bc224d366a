// Bilinear upsampling on CPU: forward and a deterministic gather backward.
//
// Both memory formats are handled by one code path: a tensor is viewed as
// (P, H, W, V) with P = N*C, V = 1 for NCHW and P = N, V = C for channels_last, so a
// spatial row is always W*V contiguous elements. Bilinear interpolation is separable,
// so each output row is a vertical blend of two input rows (contiguous, vectorised)
// followed by a horizontal two-tap gather; backward is the transpose, also as gathers
// (every output writes its own element once: no atomics, same bits every run).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "bilinear/args.h"
#include "common/separable.h"

namespace fcn_kernels {
namespace {

// Forward along one axis: output o reads i0 and i1 (kept as two terms even when equal,
// which reproduces ATen's arithmetic exactly).
template <typename acc_t>
Csr<acc_t> forward_map(int64_t in, int64_t out, bool align_corners, double scale) {
  const acc_t ratio = linear_ratio<acc_t>(in, out, align_corners, scale);
  Csr<acc_t> m;
  for (int64_t o = 0; o < out; ++o) {
    const auto t = linear_tap<acc_t>(ratio, o, in, out, align_corners);
    m.add(t.i0, t.l0);
    m.add(t.i1, t.l1);
    m.close_row();
  }
  m.close();
  return m;
}

// Backward along one axis (the transpose): input i gathers the outputs that read it,
// found with the same range search the CUDA backward uses, so CPU tests cover it.
template <typename acc_t>
Csr<acc_t> backward_map(int64_t in, int64_t out, bool align_corners, double scale) {
  const acc_t ratio = linear_ratio<acc_t>(in, out, align_corners, scale);
  Csr<acc_t> m;
  for (int64_t i = 0; i < in; ++i) {
    const int64_t lo = linear_first_output<acc_t>(ratio, i - 1, in, out, align_corners);
    const int64_t hi = linear_first_output<acc_t>(ratio, i + 1, in, out, align_corners);
    for (int64_t o = lo; o < hi; ++o) {
      const acc_t w = linear_weight(linear_tap<acc_t>(ratio, o, in, out, align_corners), i);
      if (w != acc_t(0)) m.add(o, w);
    }
    m.close_row();
  }
  m.close();
  return m;
}

at::Tensor bilinear_upsample_cpu(const at::Tensor& self, at::IntArrayRef output_size,
                                 bool align_corners, std::optional<double> scale_h,
                                 std::optional<double> scale_w) {
  check_bilinear(self, output_size, "input");
  const auto fmt = layout_of(self);
  const at::Tensor x = self.contiguous(fmt);
  const int64_t OH = output_size[0], OW = output_size[1];
  at::Tensor y = at::empty({x.size(0), x.size(1), OH, OW}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const auto [P, V] = planes_and_vec(x, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bilinear_upsample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    separable_apply<scalar_t>(x, y, P, V,
                    forward_map<acc_t>(x.size(2), OH, align_corners, scale_h.value_or(-1.0)),
                    forward_map<acc_t>(x.size(3), OW, align_corners, scale_w.value_or(-1.0)));
  });
  return y;
}

at::Tensor bilinear_upsample_backward_cpu(const at::Tensor& grad_output,
                                          at::IntArrayRef input_size, bool align_corners,
                                          std::optional<double> scale_h,
                                          std::optional<double> scale_w) {
  check_bilinear_backward(grad_output, input_size);
  const auto fmt = layout_of(grad_output);
  const at::Tensor g = grad_output.contiguous(fmt);
  at::Tensor gx = at::empty(input_size, g.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  const auto [P, V] = planes_and_vec(g, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bilinear_upsample_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    separable_apply<scalar_t>(g, gx, P, V,
                    backward_map<acc_t>(input_size[2], g.size(2), align_corners, scale_h.value_or(-1.0)),
                    backward_map<acc_t>(input_size[3], g.size(3), align_corners, scale_w.value_or(-1.0)));
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CPU, m) {
  m.impl("bilinear_upsample", &bilinear_upsample_cpu);
  m.impl("bilinear_upsample_backward", &bilinear_upsample_backward_cpu);
}

}  // namespace fcn_kernels
