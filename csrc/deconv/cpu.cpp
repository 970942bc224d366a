// Fused transposed convolution + crop on CPU: forward, backward-input, backward-weight.
// The entry points and the choice of path; the paths are in the files cpu.h lists.
//
// Only the cropped window is ever computed. Two paths:
// * channel-diagonal weight (FCN's bilinear upsampling, any depthwise weight):
//   cpu_diagonal.cpp;
// * any other weight: a sub-pixel (phase) decomposition into plain GEMMs over the blocks
//   under the crop window only: cpu_phase.cpp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "deconv/args.h"
#include "deconv/const_grad.h"
#include "deconv/cpu.h"

namespace fcn_kernels {
namespace deconv_cpu {
namespace {

inline c10::ScalarType acc_type_of(c10::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// deconv_is_channel_diagonal (deconv/args.h) with tensor ops reads the whole weight
// several times and syncs; a direct scan stops at the first off-diagonal non-zero
// (benches/RESULTS.md).
bool is_channel_diagonal_cpu(const at::Tensor& weight, int64_t groups) {
  const int64_t cin_g = weight.size(0) / groups, cout_g = weight.size(1);
  if (cin_g != cout_g) return false;
  const at::Tensor w = weight.contiguous();
  const int64_t K = w.size(2) * w.size(3);
  bool diagonal = true;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, w.scalar_type(), "deconv_diag_check", [&] {
        const scalar_t* p = w.const_data_ptr<scalar_t>();
        for (int64_t ci = 0; ci < w.size(0) && diagonal; ++ci) {
          for (int64_t j = 0; j < cout_g && diagonal; ++j) {
            if (ci % cin_g == j) continue;
            const scalar_t* blk = p + (ci * cout_g + j) * K;
            for (int64_t e = 0; e < K; ++e) {
              if (static_cast<float>(blk[e]) != 0.f) {  // NaN != 0 too: stays exact
                diagonal = false;
                break;
              }
            }
          }
        }
      });
  return diagonal;
}

// (C, KH, KW) diagonal of a channel-diagonal weight, in the accumulation type.
at::Tensor diagonal_weight(const at::Tensor& w, int64_t G) {
  const int64_t cg = w.size(1), KH = w.size(2), KW = w.size(3);
  return w.reshape({G, cg, cg, KH, KW})
      .diagonal(0, 1, 2)  // (G, KH, KW, cg)
      .permute({0, 3, 1, 2})
      .reshape({G * cg, KH, KW})
      .to(acc_type_of(w.scalar_type()))
      .contiguous();
}

// Runs f(T{}, gemm_t{}) with gemm_t = float where the AVX-512 kernels run (bfloat16 /
// half converted), else gemm_t = T (ATen's mm). ATen's bfloat16 GEMM (oneDNN, AVX512-BF16
// dot products) does a multiply-add faster than our float kernels but has a fixed cost
// per call: bfloat16 keeps it for chunk GEMMs above 2M multiply-adds, where it wins
// (benches/RESULTS.md).
template <typename T, typename F>
void with_compute_type(const PhaseGeom& geom, const F& f) {
  if constexpr (std::is_same_v<T, double>) {
    f(T{}, T{});
  } else {
    const bool bf16_library_gemm =
        std::is_same_v<T, at::BFloat16> && geom.M * geom.K * geom.rc * geom.Wp > (int64_t{2} << 20);
    if (avx512_gemm() && !bf16_library_gemm) {
      f(T{}, float{});
    } else {
      f(T{}, T{});
    }
  }
}

at::Tensor conv_transpose2d_crop_cpu(const at::Tensor& self, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias_opt,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef output_padding, int64_t groups,
                                     at::IntArrayRef dilation, at::IntArrayRef offset,
                                     at::IntArrayRef size) {
  check_deconv_forward(self, weight, bias_opt, stride, padding, output_padding, groups, dilation,
                       offset, size);
  const int64_t N = self.size(0), IH = self.size(2), IW = self.size(3);
  const int64_t KH = weight.size(2), KW = weight.size(3), Cout = weight.size(1) * groups;
  const int64_t OH = size[0], OW = size[1];
  at::Tensor bias;
  if (bias_opt.has_value() && bias_opt->defined()) {
    bias = bias_opt->to(acc_type_of(bias_opt->scalar_type())).contiguous();
  }
  const auto fmt = layout_of(self);
  if (N == 0 || Cout == 0) return at::empty({N, Cout, OH, OW}, self.options().memory_format(fmt));

  if (is_channel_diagonal_cpu(weight, groups)) {
    at::Tensor y = at::empty({N, Cout, OH, OW}, self.options().memory_format(fmt));
    const at::Tensor x = self.contiguous(fmt);
    const at::Tensor wd = diagonal_weight(weight, groups);
    const Taps th = source_taps(OH, offset[0], 0, KH, stride[0], padding[0], dilation[0], IH);
    const Taps tw = source_taps(OW, offset[1], 0, KW, stride[1], padding[1], dilation[1], IW);
    const auto [P, V] = planes_and_vec(x, fmt);
    const DiagonalProduct prod{
        P, V, th, tw, /*forward=*/true, {stride[1], dilation[1], padding[1], offset[1]}};
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "deconv_diag_cpu", [&] {
          if (!bias.defined() && uniform_diagonal<scalar_t>(x, y, wd, prod)) return;
          diagonal_gather<scalar_t>(x, y, wd, bias, prod);
        });
    return y;
  }

  // Any other weight: the phase GEMMs (cpu_phase.cpp), reading x through its strides.
  const PhaseGeom geom = phase_geom(N, self.size(1), weight.sizes(), groups, stride, padding,
                                    dilation, offset, OH, OW, self.element_size());
  const at::Tensor b =
      bias_opt.has_value() && bias_opt->defined() ? bias_opt->contiguous() : at::Tensor();
  at::Tensor y = at::empty({N, Cout, OH, OW}, self.options().memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, self.scalar_type(), "deconv_phase_cpu", [&] {
        with_compute_type<scalar_t>(geom, [&](auto t, auto gemm) {
          phase_forward<decltype(t), decltype(gemm)>(self, weight, b, y, geom);
        });
      });
  return y;
}

at::Tensor conv_transpose2d_crop_backward_input_cpu(const at::Tensor& grad_output,
                                                    const at::Tensor& weight,
                                                    at::IntArrayRef input_size,
                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                    int64_t groups, at::IntArrayRef dilation,
                                                    at::IntArrayRef offset) {
  check_deconv_backward_input(grad_output, weight, input_size, stride, padding, groups, dilation,
                              offset);
  const int64_t Cin = input_size[1], IH = input_size[2], IW = input_size[3];
  const int64_t KH = weight.size(2), KW = weight.size(3);
  const int64_t OH = grad_output.size(2), OW = grad_output.size(3);
  const auto fmt = layout_of(grad_output);
  at::Tensor gx = at::empty(input_size, grad_output.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  if (OH == 0 || OW == 0) return gx.zero_();
  if (is_plane_constant(grad_output)) {  // e.g. loss = y.sum(): see deconv/const_grad.h
    return deconv_const_grad_input(grad_output, weight, input_size, stride, padding, groups,
                                   dilation, offset);
  }

  if (is_channel_diagonal_cpu(weight, groups)) {
    const at::Tensor g = grad_output.contiguous(fmt);
    const at::Tensor wd = diagonal_weight(weight, groups);
    const Taps th = target_taps(IH, KH, stride[0], padding[0], dilation[0], offset[0], OH);
    const Taps tw = target_taps(IW, KW, stride[1], padding[1], dilation[1], offset[1], OW);
    const auto [P, V] = planes_and_vec(gx, fmt);
    const DiagonalProduct prod{
        P, V, th, tw, /*forward=*/false, {stride[1], dilation[1], padding[1], offset[1]}};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                    "deconv_diag_bwd_cpu", [&] {
                                      if (uniform_diagonal<scalar_t>(g, gx, wd, prod)) return;
                                      diagonal_gather<scalar_t>(g, gx, wd, at::Tensor(), prod);
                                    });
    return gx;
  }

  const PhaseGeom geom = phase_geom(input_size[0], Cin, weight.sizes(), groups, stride, padding,
                                    dilation, offset, OH, OW, grad_output.element_size());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "deconv_phase_bwd_cpu", [&] {
        with_compute_type<scalar_t>(geom, [&](auto t, auto gemm) {
          phase_backward_input<decltype(t), decltype(gemm)>(grad_output, weight, gx, geom);
        });
      });
  return gx;
}

at::Tensor conv_transpose2d_crop_backward_weight_cpu(
    const at::Tensor& grad_output, const at::Tensor& self, at::IntArrayRef weight_size,
    at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups, at::IntArrayRef dilation,
    at::IntArrayRef offset) {
  check_deconv_backward_weight(grad_output, self, weight_size, stride, padding, groups, dilation,
                               offset);
  const int64_t N = self.size(0), Cout = weight_size[1] * groups;
  const int64_t OH = grad_output.size(2), OW = grad_output.size(3);
  if (N == 0 || OH == 0 || OW == 0 || Cout == 0) {
    return at::zeros(weight_size, self.options());
  }
  if (is_plane_constant(grad_output)) {
    return deconv_const_grad_weight(grad_output, self, weight_size, stride, padding, groups,
                                    dilation, offset);
  }
  const PhaseGeom geom = phase_geom(N, self.size(1), weight_size, groups, stride, padding, dilation,
                                    offset, OH, OW, self.element_size());
  at::Tensor gw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(),
                                  "deconv_phase_wgrad_cpu", [&] {
                                    with_compute_type<scalar_t>(geom, [&](auto t, auto gemm) {
                                      gw = phase_backward_weight<decltype(t), decltype(gemm)>(
                                          grad_output, self, weight_size, geom);
                                    });
                                  });
  return gw;
}

}  // namespace
}  // namespace deconv_cpu

using deconv_cpu::conv_transpose2d_crop_backward_input_cpu;
using deconv_cpu::conv_transpose2d_crop_backward_weight_cpu;
using deconv_cpu::conv_transpose2d_crop_cpu;

TORCH_LIBRARY_IMPL(fcn_kernels, CPU, m) {
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_cpu);
  m.impl("conv_transpose2d_crop_backward_input", &conv_transpose2d_crop_backward_input_cpu);
  m.impl("conv_transpose2d_crop_backward_weight", &conv_transpose2d_crop_backward_weight_cpu);
}

}  // namespace fcn_kernels
