// Shared input checks and index math for the fcn_kernels operators.
// Everything marked FK_HD is compiled for both host and device, so the CPU tests
// exercise exactly the arithmetic the CUDA kernels use.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <utility>

#ifdef __CUDACC__
#define FK_HD __host__ __device__ __forceinline__
#else
#define FK_HD inline
#endif

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

template <typename acc_t>
struct LinearTap {
  int64_t i0, i1;  // the two source indices (equal at the last row/column)
  acc_t l0, l1;    // their weights, l0 + l1 == 1
};

template <typename acc_t>
FK_HD LinearTap<acc_t> linear_tap(acc_t ratio, int64_t o, int64_t in, int64_t out,
                                  bool align_corners) {
  LinearTap<acc_t> t;
  if (in == out) {  // identity along this axis, as ATen's CPU kernel special-cases
    t.i0 = t.i1 = o;
    t.l0 = acc_t(1);
    t.l1 = acc_t(0);
    return t;
  }
  acc_t src = align_corners ? ratio * static_cast<acc_t>(o)
                            : ratio * (static_cast<acc_t>(o) + acc_t(0.5)) - acc_t(0.5);
  if (src < acc_t(0)) src = acc_t(0);
  int64_t i0 = static_cast<int64_t>(src);  // src >= 0: truncation == floor
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

// ---------------------------------------------------------------------------
// Host-side helpers shared by the CPU and CUDA entry points. The Python wrappers
// validate first with friendlier messages; these guard direct torch.ops calls.
// ---------------------------------------------------------------------------

// Output/working layout: channels_last when the tensor is exactly channels_last
// contiguous (and not also plain contiguous), otherwise NCHW. The fake kernels in
// fcn_kernels/_common.py apply the same rule so strides match under torch.compile.
inline at::MemoryFormat layout_of(const at::Tensor& t) {
  return (t.dim() == 4 && !t.is_contiguous() &&
          t.is_contiguous(at::MemoryFormat::ChannelsLast))
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// (P, V) of the (P, H, W, V) view every kernel works on: P = N*C planes of V = 1 for
// NCHW, P = N images of V = C interleaved channels for channels_last. A spatial row is
// then always W*V contiguous elements, whatever the layout.
inline std::pair<int64_t, int64_t> planes_and_vec(const at::Tensor& t, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::ChannelsLast) return {t.size(0), t.size(1)};
  return {t.size(0) * t.size(1), 1};
}

inline void check_float4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be a 4-D (N, C, H, W) tensor, got ", t.dim(),
              "-D");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name,
              " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_bilinear(const at::Tensor& x, at::IntArrayRef output_size,
                           const char* name) {
  check_float4d(x, name);
  TORCH_CHECK(output_size.size() == 2, "output_size must have 2 elements");
  TORCH_CHECK(output_size[0] > 0 && output_size[1] > 0,
              "output_size must be positive, got ", output_size);
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, name,
              " must have non-empty spatial dimensions, got ", x.sizes());
}

// ---------------------------------------------------------------------------
// Transposed convolution + crop (deconv_cpu.cpp / deconv_cuda.cu).
// Full-map coordinate of input index i under tap k: Y = i*s - p + k*d. The cropped
// output coordinate is o = Y - off. Forward gathers (o -> i), backward scatters are
// rewritten as gathers (i -> o); both directions are these two functions.
// ---------------------------------------------------------------------------

// Source index i of full-map coordinate Y through tap k, or -1 if none.
FK_HD int64_t deconv_source(int64_t Y, int64_t k, int64_t s, int64_t p, int64_t d,
                            int64_t in) {
  const int64_t t = Y + p - k * d;
  if (t < 0 || t % s != 0) return -1;
  const int64_t i = t / s;
  return i < in ? i : -1;
}

// Cropped output coordinate that input index i reaches through tap k, or -1 if it
// falls outside the crop window [off, off + out).
FK_HD int64_t deconv_target(int64_t i, int64_t k, int64_t s, int64_t p, int64_t d,
                            int64_t off, int64_t out) {
  const int64_t o = i * s - p + k * d - off;
  return (o >= 0 && o < out) ? o : -1;
}

// The taps k with deconv_source(Y, k, ...) defined form an arithmetic progression
// k = first, first + step, ... (step = s / gcd(s, d)): iterate those only instead of
// testing all K taps (FCN's k64 s32 upsampling: 2 taps, not 64, per axis).
// Returns first in [0, step) or -1 when no tap of any size can reach Y.
FK_HD int64_t deconv_first_tap(int64_t Y, int64_t s, int64_t p, int64_t d, int64_t& step) {
  int64_t a = s, b = d;
  while (b != 0) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  step = s / a;
  for (int64_t k = 0; k < step; ++k) {
    const int64_t t = Y + p - k * d;
    if (((t % s) + s) % s == 0) return k;
  }
  return -1;
}

inline int64_t deconv_full_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d,
                                int64_t op) {
  return (in - 1) * s - 2 * p + d * (k - 1) + op + 1;
}

// Shape checks shared by the three deconv ops (the Python wrapper gives friendlier
// messages first). x: (N, Cin, IH, IW), weight: (Cin, Cout/groups, KH, KW).
inline void check_deconv(at::IntArrayRef x, at::IntArrayRef w, at::IntArrayRef stride,
                         at::IntArrayRef padding, int64_t groups, at::IntArrayRef dilation,
                         at::IntArrayRef offset) {
  TORCH_CHECK(x.size() == 4 && w.size() == 4, "input and weight must be 4-D");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 &&
                  offset.size() == 2,
              "stride, padding, dilation and offset must have 2 elements");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "stride must be positive, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "dilation must be positive, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "padding must be >= 0, got ", padding);
  TORCH_CHECK(offset[0] >= 0 && offset[1] >= 0, "offset must be >= 0, got ", offset);
  TORCH_CHECK(groups > 0 && x[1] % groups == 0 && w[0] == x[1],
              "weight.size(0) must equal input channels ", x[1],
              " and be divisible by groups ", groups);
  TORCH_CHECK(x[2] > 0 && x[3] > 0 && w[1] > 0 && w[2] > 0 && w[3] > 0,
              "input and weight must have non-empty channel/spatial dimensions");
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.device() == b.device(), what,
              " must have the same dtype and device, got ", a.scalar_type(), " on ",
              a.device(), " and ", b.scalar_type(), " on ", b.device());
}

// Argument checks of the two conv_transpose2d_crop backward ops (CPU and CUDA kernels).
inline void check_deconv_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef input_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, int64_t groups,
                                        at::IntArrayRef dilation, at::IntArrayRef offset) {
  TORCH_CHECK(input_size.size() == 4, "input_size must have 4 elements");
  check_float4d(grad_output, "grad_output");
  check_float4d(weight, "weight");
  check_same(grad_output, weight, "grad_output and weight");
  check_deconv(input_size, weight.sizes(), stride, padding, groups, dilation, offset);
  TORCH_CHECK(grad_output.size(0) == input_size[0] &&
                  grad_output.size(1) == weight.size(1) * groups,
              "grad_output shape ", grad_output.sizes(), " does not match input_size ",
              input_size, " and weight ", weight.sizes());
}

inline void check_deconv_backward_weight(const at::Tensor& grad_output, const at::Tensor& self,
                                         at::IntArrayRef weight_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, int64_t groups,
                                         at::IntArrayRef dilation, at::IntArrayRef offset) {
  TORCH_CHECK(weight_size.size() == 4, "weight_size must have 4 elements");
  check_float4d(grad_output, "grad_output");
  check_float4d(self, "input");
  check_same(grad_output, self, "grad_output and input");
  check_deconv(self.sizes(), weight_size, stride, padding, groups, dilation, offset);
  TORCH_CHECK(grad_output.size(0) == self.size(0) &&
                  grad_output.size(1) == weight_size[1] * groups,
              "grad_output shape ", grad_output.sizes(), " does not match input ",
              self.sizes(), " and weight_size ", weight_size);
}

// Every argument check of the conv_transpose2d_crop forward (CPU and CUDA kernels).
inline void check_deconv_forward(const at::Tensor& self, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                 int64_t groups, at::IntArrayRef dilation,
                                 at::IntArrayRef offset, at::IntArrayRef size) {
  check_float4d(self, "input");
  check_float4d(weight, "weight");
  check_same(self, weight, "input and weight");
  check_deconv(self.sizes(), weight.sizes(), stride, padding, groups, dilation, offset);
  TORCH_CHECK(output_padding.size() == 2 && size.size() == 2,
              "output_padding and size must have 2 elements");
  for (int a = 0; a < 2; ++a) {
    const int64_t full = deconv_full_size(self.size(2 + a), weight.size(2 + a), stride[a],
                                          padding[a], dilation[a], output_padding[a]);
    TORCH_CHECK(size[a] > 0 && offset[a] + size[a] <= full, "crop window offset ", offset,
                " size ", size, " does not fit the full output of size ", full,
                " along dimension ", 2 + a);
  }
  if (bias.has_value() && bias->defined()) {
    const int64_t cout = weight.size(1) * groups;
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == cout, "bias must be a 1-D tensor of ",
                cout, " elements");
    check_same(*bias, self, "bias and input");
  }
}

// True when every group's (Cin_g x Cout_g) channel block is diagonal (Cin_g == Cout_g,
// zeros off the diagonal): FCN's bilinear upsampling weight, and any depthwise one.
// Then output channel c reads only input channel c, which the fast paths exploit;
// the check is exact (a NaN/Inf off the diagonal counts as non-zero).
inline bool deconv_is_channel_diagonal(const at::Tensor& w, int64_t groups) {
  const int64_t cin_g = w.size(0) / groups, cout_g = w.size(1);
  if (cin_g != cout_g) return false;
  if (cin_g == 1) return true;
  const at::Tensor w5 = w.reshape({groups, cin_g, cout_g, w.size(2), w.size(3)});
  const at::Tensor nz_all = w5.ne(0).sum();
  const at::Tensor nz_diag = w5.diagonal(0, 1, 2).ne(0).sum();
  return nz_all.sub(nz_diag).item().toLong() == 0;  // one host sync on CUDA
}

}  // namespace fcn_kernels
