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
#include "common/grad_layout.h"
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
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "bilinear_upsample_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        separable_apply<scalar_t>(
            x, y, P, V, forward_map<acc_t>(x.size(2), OH, align_corners, scale_h.value_or(-1.0)),
            forward_map<acc_t>(x.size(3), OW, align_corners, scale_w.value_or(-1.0)));
      });
  return y;
}

// Backward of a gradient constant over each plane (e.g. from loss = y.sum()): the
// separable backward of a constant v is v * rh[i] * rw[j], rh / rw the row sums of the
// per-axis backward maps (how much output weight each input row / column carries).
// Writes grad_input once and never reads the expanded gradient.
template <typename scalar_t>
void backward_plane_constant(const at::Tensor& grad_output, at::Tensor& gx, bool align_corners,
                             std::optional<double> scale_h, std::optional<double> scale_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = gx.size(1), IH = gx.size(2), IW = gx.size(3);
  const auto row_sums = [&](int64_t in, int64_t out, std::optional<double> scale) {
    const Csr<acc_t> m = backward_map<acc_t>(in, out, align_corners, scale.value_or(-1.0));
    std::vector<acc_t> r(in, acc_t(0));
    for (int64_t i = 0; i < in; ++i) {
      for (int64_t k = m.start[i]; k < m.start[i + 1]; ++k) r[i] += m.weight[k];
    }
    return r;
  };
  const std::vector<acc_t> rh = row_sums(IH, grad_output.size(2), scale_h);
  const std::vector<acc_t> rw = row_sums(IW, grad_output.size(3), scale_w);
  const at::Tensor v = plane_values(grad_output);  // (N, C), any strides
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1);
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();  // contiguous NCHW
  at::parallel_for(0, gx.size(0) * C, std::max<int64_t>(1, 32768 / (IH * IW)),
                   [&](int64_t p0, int64_t p1) {
                     for (int64_t p = p0; p < p1; ++p) {
                       const acc_t val = static_cast<acc_t>(vp[(p / C) * vs0 + (p % C) * vs1]);
                       scalar_t* o = out + p * IH * IW;
                       for (int64_t i = 0; i < IH; ++i) {
                         const acc_t a = val * rh[i];
                         for (int64_t j = 0; j < IW; ++j)
                           o[i * IW + j] = static_cast<scalar_t>(a * rw[j]);
                       }
                     }
                   });
}

at::Tensor bilinear_upsample_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                          bool align_corners, std::optional<double> scale_h,
                                          std::optional<double> scale_w) {
  check_bilinear_backward(grad_output, input_size);
  if (is_plane_constant(grad_output)) {
    at::Tensor gx = at::empty(input_size, grad_output.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, gx.scalar_type(), "bilinear_backward_const_cpu", [&] {
          backward_plane_constant<scalar_t>(grad_output, gx, align_corners, scale_h, scale_w);
        });
    return gx;
  }
  // Any other layout is copied to the working layout (as ATen's CPU backward does).
  const auto fmt = layout_of(grad_output);
  const at::Tensor g = grad_output.contiguous(fmt);
  at::Tensor gx = at::empty(input_size, g.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  const auto [P, V] = planes_and_vec(g, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, g.scalar_type(), "bilinear_upsample_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        separable_apply<scalar_t>(
            g, gx, P, V,
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
