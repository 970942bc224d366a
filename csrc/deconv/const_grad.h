// Transposed convolution + crop: backward of a gradient constant over each output plane
// (e.g. from loss = y.sum(), see common/grad_layout.h), without reading the expanded map.
//
// Input i (along one axis) reaches crop position i*s - p + k*d - offset through tap k;
// A[i, k] = 1 when that position lies inside the crop. With v[n, co] the plane values:
//   grad_x[n, ci, i, j] = sum_{co, kh, kw} v[n, co] W[ci, co, kh, kw] Ah[i, kh] Aw[j, kw]
//   grad_W[ci, co, kh, kw] = sum_n v[n, co] sum_{i, j} x[n, ci, i, j] Ah[i, kh] Aw[j, kw]
// (co within ci's group): small products of ATen ops, in float (double for double).
#pragma once

#include <ATen/ATen.h>

#include "common/grad_layout.h"

namespace fcn_kernels {

// A (in x k) for one axis, in dtype `dt`.
inline at::Tensor crop_taps(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, int64_t offset,
                            int64_t out, const at::TensorOptions& o) {
  const at::Tensor i = at::arange(in, o.dtype(at::kLong)).unsqueeze(1);
  const at::Tensor t = at::arange(k, o.dtype(at::kLong)).unsqueeze(0);
  const at::Tensor pos = i * s - p + t * d - offset;
  return pos.ge(0).logical_and(pos.lt(out)).to(o.dtype());
}

inline at::ScalarType const_grad_acc(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// (Ah, Aw) for the problem: input (IH, IW), weight taps (KH, KW), crop (OH, OW).
inline std::pair<at::Tensor, at::Tensor> crop_tap_pair(
    at::IntArrayRef in_hw, at::IntArrayRef k_hw, at::IntArrayRef out_hw, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef offset,
    const at::TensorOptions& o) {
  return {
      crop_taps(in_hw[0], k_hw[0], stride[0], padding[0], dilation[0], offset[0], out_hw[0], o),
      crop_taps(in_hw[1], k_hw[1], stride[1], padding[1], dilation[1], offset[1], out_hw[1], o)};
}

inline at::Tensor deconv_const_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                          at::IntArrayRef input_size, at::IntArrayRef stride,
                                          at::IntArrayRef padding, int64_t groups,
                                          at::IntArrayRef dilation, at::IntArrayRef offset) {
  const auto acc = grad_output.options().dtype(const_grad_acc(grad_output.scalar_type()));
  const int64_t N = input_size[0], Cin = input_size[1], cing = Cin / groups;
  const int64_t coutg = weight.size(1), KH = weight.size(2), KW = weight.size(3);
  const auto [ah, aw] =
      crop_tap_pair(input_size.slice(2), weight.sizes().slice(2), grad_output.sizes().slice(2),
                    stride, padding, dilation, offset, acc);
  const at::Tensor v = plane_values(grad_output).to(acc.dtype()).reshape({N, groups, coutg});
  const at::Tensor w = weight.to(acc.dtype()).reshape({groups, cing, coutg, KH * KW});
  // u[n, g, ci, (kh, kw)] = sum_co v[n, g, co] w[g, ci, co, (kh, kw)]
  const at::Tensor u = at::einsum("ngd,gcdk->ngck", {v, w}).reshape({N, Cin, KH, KW});
  return at::matmul(ah, at::matmul(u, aw.t())).to(grad_output.scalar_type());
}

inline at::Tensor deconv_const_grad_weight(const at::Tensor& grad_output, const at::Tensor& x,
                                           at::IntArrayRef weight_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, int64_t groups,
                                           at::IntArrayRef dilation, at::IntArrayRef offset) {
  const auto acc = grad_output.options().dtype(const_grad_acc(grad_output.scalar_type()));
  const int64_t N = x.size(0), Cin = x.size(1), cing = Cin / groups;
  const int64_t coutg = weight_size[1], KH = weight_size[2], KW = weight_size[3];
  const auto [ah, aw] =
      crop_tap_pair(x.sizes().slice(2), weight_size.slice(2), grad_output.sizes().slice(2), stride,
                    padding, dilation, offset, acc);
  const at::Tensor v = plane_values(grad_output).to(acc.dtype()).reshape({N, groups, coutg});
  // s[n, ci, kh, kw] = sum_{i, j} x[n, ci, i, j] Ah[i, kh] Aw[j, kw]
  const at::Tensor s =
      at::matmul(at::matmul(ah.t(), x.to(acc.dtype())), aw).reshape({N, groups, cing, KH * KW});
  return at::einsum("ngd,ngck->gcdk", {v, s}).reshape(weight_size).to(x.scalar_type());
}

}  // namespace fcn_kernels
