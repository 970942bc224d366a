// Transposed convolution + crop: argument checks and index math shared by the CPU
// kernels (deconv/cpu.cpp) and the GPU kernels (deconv/gpu.h).
#pragma once

#include <cstdint>

#include "common/tensor.h"

namespace fcn_kernels {

// ---------------------------------------------------------------------------
// Transposed convolution + crop (deconv/cpu.cpp, deconv/gpu_kernels.h).
// Full-map coordinate of input index i under tap k: Y = i*s - p + k*d. The cropped
// output coordinate is o = Y - off. Forward gathers (o -> i), backward scatters are
// rewritten as gathers (i -> o); both directions are these two functions.
// ---------------------------------------------------------------------------

// Source index i of full-map coordinate Y through tap k, or -1 if none.
FK_HD int64_t deconv_source(int64_t Y, int64_t k, int64_t s, int64_t p, int64_t d, int64_t in) {
  const int64_t t = Y + p - k * d;
  if (t < 0 || t % s != 0) return -1;
  const int64_t i = t / s;
  return i < in ? i : -1;
}

// Cropped output coordinate that input index i reaches through tap k, or -1 if it
// falls outside the crop window [off, off + out).
FK_HD int64_t deconv_target(int64_t i, int64_t k, int64_t s, int64_t p, int64_t d, int64_t off,
                            int64_t out) {
  const int64_t o = i * s - p + k * d - off;
  return (o >= 0 && o < out) ? o : -1;
}

// The taps k with deconv_source(Y, k, ...) defined form an arithmetic progression
// k = first, first + step, ... (step = s / gcd(s, d)): iterate those only instead of
// testing all K taps (FCN's k64 s32 upsampling: 2 taps, not 64, per axis).
// Returns first in [0, step) or -1 when no tap of any size can reach Y. Closed form:
// k*d = Y + p (mod s) has a solution iff g = gcd(s, d) divides r = (Y + p) mod s, then
// k = (r/g) * (d/g)^-1 mod step. (The GPU kernels, deconv/gpu_kernels.h, do the same
// with the inverse computed once on the host.)
FK_HD int64_t deconv_first_tap(int64_t Y, int64_t s, int64_t p, int64_t d, int64_t& step) {
  int64_t a = s, b = d;
  while (b != 0) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  step = s / a;
  const int64_t r = ((Y + p) % s + s) % s;
  if (r % a != 0) return -1;
  // (d/g)^-1 mod step by the extended Euclid algorithm.
  int64_t r0 = step, r1 = (d / a) % step, t0 = 0, t1 = 1;
  while (r1 != 0) {
    const int64_t q = r0 / r1, r2 = r0 - q * r1, t2 = t0 - q * t1;
    r0 = r1;
    r1 = r2;
    t0 = t1;
    t1 = t2;
  }
  const int64_t inv = step == 1 ? 0 : (t0 % step + step) % step;
  return (r / a) % step * inv % step;
}

inline int64_t deconv_full_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d,
                                int64_t op) {
  return (in - 1) * s - 2 * p + d * (k - 1) + op + 1;
}

// The argument checks of the three deconv ops, shared by the CPU and GPU code, with
// the exception types and words of the Python wrapper (fcn_kernels/deconv.py), which only
// normalises arguments: a direct torch.ops call fails exactly as the wrapper does.
// x: (N, Cin, IH, IW), weight: (Cin, Cout/groups, KH, KW).
inline void check_deconv(at::IntArrayRef x, at::IntArrayRef w, at::IntArrayRef stride,
                         at::IntArrayRef padding, int64_t groups, at::IntArrayRef dilation,
                         at::IntArrayRef offset) {
  TORCH_CHECK_VALUE(x.size() == 4 && w.size() == 4, "input and weight must be 4-D");
  TORCH_CHECK_VALUE(
      stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 && offset.size() == 2,
      "stride, padding, dilation and offset must have 2 elements");
  TORCH_CHECK_VALUE(stride[0] > 0 && stride[1] > 0, "stride must be positive, got ", stride);
  TORCH_CHECK_VALUE(dilation[0] > 0 && dilation[1] > 0, "dilation must be positive, got ",
                    dilation);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, "padding must be >= 0, got ", padding);
  TORCH_CHECK_VALUE(offset[0] >= 0 && offset[1] >= 0, "offset must be >= 0, got ", offset);
  TORCH_CHECK_VALUE(groups > 0, "groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(x[1] % groups == 0 && w[0] == x[1], "weight.shape[0] (", w[0],
                    ") must equal the input channels (", x[1], "), divisible by groups (", groups,
                    ")");
  TORCH_CHECK_VALUE(w[1] > 0 && w[2] > 0 && w[3] > 0,
                    "weight must have non-empty output channel and kernel dimensions, got "
                    "shape ",
                    w);
  TORCH_CHECK_VALUE(x[2] > 0 && x[3] > 0,
                    "input must have non-empty spatial dimensions, got "
                    "shape ",
                    x);
}

// Argument checks of the two conv_transpose2d_crop backward ops: grad_output beside
// `operand` (the weight or the input), x / w the forward's input and weight sizes, one of
// which is the op's size argument `given_name` (input_size or weight_size).
inline void check_deconv_backward(const at::Tensor& grad_output, const at::Tensor& operand,
                                  const char* operand_name, at::IntArrayRef x, at::IntArrayRef w,
                                  const char* given_name, at::IntArrayRef stride,
                                  at::IntArrayRef padding, int64_t groups, at::IntArrayRef dilation,
                                  at::IntArrayRef offset) {
  check_float4d(grad_output, "grad_output");
  check_float4d(operand, operand_name);
  TORCH_CHECK_VALUE(x.size() == 4 && w.size() == 4, given_name, " must have 4 elements");
  check_same(operand, operand_name, grad_output, "grad_output's");
  check_deconv(x, w, stride, padding, groups, dilation, offset);
  TORCH_CHECK_VALUE(grad_output.size(0) == x[0] && grad_output.size(1) == w[1] * groups,
                    "grad_output shape ", grad_output.sizes(), " does not match input ", x,
                    " and weight ", w);
}

inline void check_deconv_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef input_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, int64_t groups,
                                        at::IntArrayRef dilation, at::IntArrayRef offset) {
  check_deconv_backward(grad_output, weight, "weight", input_size, weight.sizes(), "input_size",
                        stride, padding, groups, dilation, offset);
}

inline void check_deconv_backward_weight(const at::Tensor& grad_output, const at::Tensor& self,
                                         at::IntArrayRef weight_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, int64_t groups,
                                         at::IntArrayRef dilation, at::IntArrayRef offset) {
  check_deconv_backward(grad_output, self, "input", self.sizes(), weight_size, "weight_size",
                        stride, padding, groups, dilation, offset);
}

// Every argument check of the conv_transpose2d_crop forward.
inline void check_deconv_forward(const at::Tensor& self, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                 int64_t groups, at::IntArrayRef dilation, at::IntArrayRef offset,
                                 at::IntArrayRef size) {
  check_float4d(self, "input");
  check_float4d(weight, "weight");
  check_same(weight, "weight", self, "the input's");
  check_deconv(self.sizes(), weight.sizes(), stride, padding, groups, dilation, offset);
  TORCH_CHECK_VALUE(output_padding.size() == 2 && size.size() == 2,
                    "output_padding and size must have 2 elements");
  if (bias.has_value() && bias->defined()) {
    check_same(*bias, "bias", self, "the input's");
    const int64_t cout = weight.size(1) * groups;
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == cout, "bias must have shape (", cout,
                      ",), got ", bias->sizes());
  }
  for (int a = 0; a < 2; ++a) {
    TORCH_CHECK_VALUE(output_padding[a] >= 0 &&
                          (output_padding[a] < stride[a] || output_padding[a] < dilation[a]),
                      "output_padding must be smaller than either stride or dilation, got "
                      "output_padding=",
                      output_padding, ", stride=", stride, ", dilation=", dilation);
  }
  int64_t full[2];
  for (int a = 0; a < 2; ++a) {
    full[a] = deconv_full_size(self.size(2 + a), weight.size(2 + a), stride[a], padding[a],
                               dilation[a], output_padding[a]);
  }
  const at::IntArrayRef full_size(full, 2);
  TORCH_CHECK_VALUE(full[0] > 0 && full[1] > 0,
                    "the transposed convolution output would be "
                    "empty (",
                    full_size, "); check padding=", padding);
  TORCH_CHECK_VALUE(size[0] > 0 && size[1] > 0, "size must be positive, got ", size);
  for (int a = 0; a < 2; ++a) {
    TORCH_CHECK_VALUE(
        offset[a] + size[a] <= full[a], "crop window offset=", offset, ", size=", size,
        " does not fit in the full transposed convolution output of size ", full_size);
  }
}

}  // namespace fcn_kernels
