// Max-unpooling: argument checks, window geometry and error reporting shared by
// unpool/cpu.cpp and the GPU code.
//
// Semantics (== F.max_unpool2d): y[n, c].view(-1)[indices[n, c, h, w]] = x[n, c, h, w],
// zeros elsewhere. When several inputs of one plane name the same output, the input that
// comes last in row-major (h, w) order wins: the same result on every device, layout and
// run (ATen's CPU kernel races there, its CUDA kernel leaves it unspecified).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>

#include "common/tensor.h"

namespace fcn_kernels {

// Output extent along one axis when output_size is not given
// (torch.nn.functional._unpool_output_size).
inline int64_t unpool_default_size(int64_t in, int64_t k, int64_t s, int64_t p) {
  return (in - 1) * s + k - 2 * p;
}

// Pooling window i along an axis covers outputs [i*s - p, i*s - p + k). When windows do
// not overlap (s >= k), block i = [unpool_block_begin(i), unpool_block_begin(i + 1))
// holds window i's in-range outputs and the gap after it; the blocks of i = 0 .. in-1
// partition [0, out).
FK_HD int64_t unpool_block_begin(int64_t i, int64_t in, int64_t out, int64_t s, int64_t p) {
  if (i <= 0) return 0;
  if (i >= in) return out;
  const int64_t b = i * s - p;
  return b < 0 ? 0 : (b > out ? out : b);
}

// Unpooling only moves elements, so kernels are instantiated per element size (bit
// patterns are copied exactly, and all-zero bits are +0 in every floating type).
template <typename F>
void dispatch_by_element_size(const at::Tensor& t, F&& f) {
  switch (t.element_size()) {
    case 2:
      f(uint16_t{});
      break;
    case 4:
      f(uint32_t{});
      break;
    case 8:
      f(uint64_t{});
      break;
    default:
      TORCH_CHECK(false, "max_unpool2d: unsupported dtype ", t.scalar_type());
  }
}

// ---------------------------------------------------------------------------
// Host-side checks. The Python wrapper (fcn_kernels/unpool.py) validates first with
// friendlier messages; these guard direct torch.ops calls.
// ---------------------------------------------------------------------------

inline void check_unpool_values(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be a 4-D (N, C, H, W) tensor, got ", t.dim(), "-D");
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", st);
}

// indices: int64, 4-D, on t's device, with t's (N, C) and, when `same_shape`, t's shape.
inline void check_unpool_indices(const at::Tensor& indices, const at::Tensor& t, const char* name,
                                 bool same_shape) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong,
                   "indices must be an int64 tensor (as returned by max_pool2d with "
                   "return_indices=True), got ",
                   indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 4, "indices must be 4-D, got ", indices.dim(), "-D");
  TORCH_CHECK_VALUE(indices.device() == t.device(), "indices must be on the device of ", name, " (",
                    t.device(), "), got ", indices.device());
  const bool ok = same_shape ? indices.sizes() == t.sizes()
                             : indices.size(0) == t.size(0) && indices.size(1) == t.size(1);
  TORCH_CHECK_VALUE(ok, "indices must have the ", same_shape ? "shape" : "batch and channels",
                    " of ", name, " ", t.sizes(), ", got ", indices.sizes());
}

// kernel_size/stride/padding valid, input spatial size (in_h, in_w) non-empty and the
// output size (out_h, out_w) one that F.max_unpool2d accepts for them:
// default - stride < out < default + stride, and positive.
inline void check_unpool_geometry(at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, int64_t in_h, int64_t in_w,
                                  int64_t out_h, int64_t out_w) {
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2,
                    "kernel_size, stride and padding must have 2 elements");
  TORCH_CHECK_VALUE(kernel_size[0] > 0 && kernel_size[1] > 0, "kernel_size must be positive, got ",
                    kernel_size);
  TORCH_CHECK_VALUE(stride[0] > 0 && stride[1] > 0, "stride must be positive, got ", stride);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, "padding must be non-negative, got ",
                    padding);
  constexpr int64_t big = int64_t(1) << 31;  // keeps the size arithmetic far from overflow
  TORCH_CHECK_VALUE(kernel_size[0] < big && kernel_size[1] < big && stride[0] < big &&
                        stride[1] < big && padding[0] < big && padding[1] < big,
                    "kernel_size, stride and padding must be below 2^31");
  TORCH_CHECK_VALUE(in_h > 0 && in_w > 0, "input must have non-empty spatial dimensions, got ",
                    in_h, "x", in_w);
  const int64_t in[2] = {in_h, in_w}, out[2] = {out_h, out_w};
  for (int d = 0; d < 2; ++d) {
    const int64_t def = unpool_default_size(in[d], kernel_size[d], stride[d], padding[d]);
    TORCH_CHECK_VALUE(
        out[d] > def - stride[d] && out[d] < def + stride[d] && out[d] > 0, "invalid output_size (",
        out_h, ", ", out_w, "): dim ", d, " must be strictly between ", def - stride[d], " and ",
        def + stride[d], " (and positive) for input of spatial size (", in_h, ", ", in_w,
        "), kernel_size ", kernel_size, ", stride ", stride, " and padding ", padding);
  }
}

// Raises the IndexError for the first (in logical N, C, H, W order) entry of `indices`
// outside [0, out_h * out_w). Called once a kernel has seen such an entry; works on
// any device (a few reductions, one host sync).
[[noreturn]] inline void raise_bad_index(const at::Tensor& indices, int64_t out_h, int64_t out_w) {
  const int64_t plane = out_h * out_w;
  const at::Tensor flat = indices.reshape(-1);
  const at::Tensor bad = flat.lt(0).logical_or_(flat.ge(plane)).to(at::kInt);
  const int64_t k = bad.argmax().item<int64_t>();  // the first maximum
  const int64_t value = flat[k].item<int64_t>();
  TORCH_INTERNAL_ASSERT(value < 0 || value >= plane, "raise_bad_index: no bad index");
  const int64_t H = indices.size(2), W = indices.size(3), C = indices.size(1);
  TORCH_CHECK_INDEX(false, "max_unpool2d: indices[", k / (C * H * W), ", ", (k / (H * W)) % C, ", ",
                    (k / W) % H, ", ", k % W, "] = ", value,
                    " is out of range for output planes of size ", out_h, "x", out_w,
                    " (each index must be in [0, ", plane, "))");
}

// One unpooling problem in the (P, H, W, V) view of common/tensor.h (P planes of V
// interleaved channels): `src` (forward: the input, backward: grad_output) and
// `indices` made contiguous in the working layout (layout_of(src)), `out` allocated in
// it. Indices planes are IH x IW, unpooled planes OH x OW. With `strided_src`, src is
// kept as given (a kernel that reads it through its strides: the GPU backward).
struct UnpoolProblem {
  at::Tensor src, indices, out;
  int64_t P, V, IH, IW, OH, OW;
};

inline UnpoolProblem unpool_problem(const at::Tensor& src, const at::Tensor& indices,
                                    at::IntArrayRef out_sizes, int64_t OH, int64_t OW,
                                    bool strided_src = false) {
  const auto fmt = layout_of(src);
  UnpoolProblem u;
  u.src = strided_src ? src : src.contiguous(fmt);
  u.indices = indices.contiguous(fmt);
  u.out = at::empty(out_sizes, u.src.options().memory_format(fmt));
  std::tie(u.P, u.V) = planes_and_vec(u.src, fmt);
  u.IH = indices.size(2);
  u.IW = indices.size(3);
  u.OH = OH;
  u.OW = OW;
  return u;
}

inline UnpoolProblem unpool_forward_problem(const at::Tensor& self, const at::Tensor& indices,
                                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef output_size) {
  check_unpool_values(self, "input");
  check_unpool_indices(indices, self, "input", /*same_shape=*/true);
  TORCH_CHECK_VALUE(output_size.size() == 2, "output_size must have 2 elements");
  const int64_t OH = output_size[0], OW = output_size[1];
  check_unpool_geometry(kernel_size, stride, padding, self.size(2), self.size(3), OH, OW);
  return unpool_problem(self, indices, {self.size(0), self.size(1), OH, OW}, OH, OW);
}

inline UnpoolProblem unpool_backward_problem(const at::Tensor& grad_output,
                                             const at::Tensor& indices, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             bool strided_src = false) {
  check_unpool_values(grad_output, "grad_output");
  check_unpool_indices(indices, grad_output, "grad_output", /*same_shape=*/false);
  const int64_t OH = grad_output.size(2), OW = grad_output.size(3);
  check_unpool_geometry(kernel_size, stride, padding, indices.size(2), indices.size(3), OH, OW);
  return unpool_problem(grad_output, indices, indices.sizes(), OH, OW, strided_src);
}

}  // namespace fcn_kernels
