// Bilinear upsampling on CUDA: forward and a deterministic two-pass gather backward.
//
// Same (P, H, W, V) view as the CPU kernel (P = N*C, V = 1 for NCHW; P = N, V = C for
// channels_last), so one kernel serves both layouts and consecutive threads touch
// consecutive addresses in either. Backward never scatters: pass 1 gathers, for every
// (input row, output column), the output rows that read that input row into a float
// buffer; pass 2 gathers along the columns. Same bits on every run, no atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "bilinear/args.h"
#include "gpu/launch.cuh"

namespace fcn_kernels {
namespace {

template <typename scalar_t, typename index_t>
__global__ void bilinear_forward_kernel(const scalar_t* __restrict__ x,
                                        scalar_t* __restrict__ y, index_t total, index_t IH,
                                        index_t IW, index_t OH, index_t OW, index_t V,
                                        bool align_corners, double scale_h, double scale_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t rh = linear_ratio<acc_t>(IH, OH, align_corners, scale_h);
  const acc_t rw = linear_ratio<acc_t>(IW, OW, align_corners, scale_w);
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t c = idx % V;
    index_t t = idx / V;
    const index_t ow = t % OW;
    t /= OW;
    const index_t oh = t % OH;
    const index_t p = t / OH;
    const auto th = linear_tap<acc_t>(rh, oh, IH, OH, align_corners);
    const auto tw = linear_tap<acc_t>(rw, ow, IW, OW, align_corners);
    const scalar_t* x0 = x + (p * IH + static_cast<index_t>(th.i0)) * IW * V + c;
    const scalar_t* x1 = x + (p * IH + static_cast<index_t>(th.i1)) * IW * V + c;
    const index_t w0 = static_cast<index_t>(tw.i0) * V, w1 = static_cast<index_t>(tw.i1) * V;
    const acc_t top = tw.l0 * static_cast<acc_t>(x0[w0]) + tw.l1 * static_cast<acc_t>(x0[w1]);
    const acc_t bot = tw.l0 * static_cast<acc_t>(x1[w0]) + tw.l1 * static_cast<acc_t>(x1[w1]);
    y[idx] = static_cast<scalar_t>(th.l0 * top + th.l1 * bot);
  }
}

// Pass 1: rows[p, ih, ow, c] = sum over output rows oh reading input row ih of
// weight(oh, ih) * grad[p, oh, ow, c].
template <typename scalar_t, typename index_t>
__global__ void bilinear_backward_rows_kernel(const scalar_t* __restrict__ g,
                                              at::opmath_type<scalar_t>* __restrict__ rows,
                                              index_t total, index_t IH, index_t OH,
                                              index_t OW, index_t V, bool align_corners,
                                              double scale_h) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t rh = linear_ratio<acc_t>(IH, OH, align_corners, scale_h);
  const index_t row = OW * V;
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t j = idx % row;  // (ow, c) within the row
    const index_t t = idx / row;
    const index_t ih = t % IH;
    const index_t p = t / IH;
    const int64_t lo = linear_first_output<acc_t>(rh, ih - 1, IH, OH, align_corners);
    const int64_t hi = linear_first_output<acc_t>(rh, ih + 1, IH, OH, align_corners);
    acc_t s = acc_t(0);
    for (int64_t oh = lo; oh < hi; ++oh) {
      const acc_t w = linear_weight(linear_tap<acc_t>(rh, oh, IH, OH, align_corners), ih);
      s += w * static_cast<acc_t>(g[(p * OH + static_cast<index_t>(oh)) * row + j]);
    }
    rows[idx] = s;
  }
}

// Pass 2: grad_input[p, ih, iw, c] = sum over output columns ow reading iw of
// weight(ow, iw) * rows[p, ih, ow, c].
template <typename scalar_t, typename index_t>
__global__ void bilinear_backward_cols_kernel(const at::opmath_type<scalar_t>* __restrict__ rows,
                                              scalar_t* __restrict__ gx, index_t total,
                                              index_t IW, index_t OW, index_t V,
                                              bool align_corners, double scale_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t rw = linear_ratio<acc_t>(IW, OW, align_corners, scale_w);
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t c = idx % V;
    index_t t = idx / V;
    const index_t iw = t % IW;
    const index_t r = t / IW;  // (p, ih)
    const int64_t lo = linear_first_output<acc_t>(rw, iw - 1, IW, OW, align_corners);
    const int64_t hi = linear_first_output<acc_t>(rw, iw + 1, IW, OW, align_corners);
    acc_t s = acc_t(0);
    for (int64_t ow = lo; ow < hi; ++ow) {
      const acc_t w = linear_weight(linear_tap<acc_t>(rw, ow, IW, OW, align_corners), iw);
      s += w * rows[(r * OW + static_cast<index_t>(ow)) * V + c];
    }
    gx[idx] = static_cast<scalar_t>(s);
  }
}

at::Tensor bilinear_upsample_cuda(const at::Tensor& self, at::IntArrayRef output_size,
                                  bool align_corners, std::optional<double> scale_h,
                                  std::optional<double> scale_w) {
  check_bilinear(self, output_size, "input");
  c10::cuda::CUDAGuard guard(self.device());
  const auto fmt = layout_of(self);
  const at::Tensor x = self.contiguous(fmt);
  at::Tensor y = at::empty({x.size(0), x.size(1), output_size[0], output_size[1]},
                           x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const int64_t V = planes_and_vec(x, fmt).second;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bilinear_upsample_cuda", [&] {
    auto launch = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      bilinear_forward_kernel<scalar_t, index_t><<<grid_for(y.numel()), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), y.numel(), x.size(2),
          x.size(3), output_size[0], output_size[1], V, align_corners,
          scale_h.value_or(-1.0), scale_w.value_or(-1.0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (fits_int32({x.numel(), y.numel()})) launch(int32_t(0)); else launch(int64_t(0));
  });
  return y;
}

at::Tensor bilinear_upsample_backward_cuda(const at::Tensor& grad_output,
                                           at::IntArrayRef input_size, bool align_corners,
                                           std::optional<double> scale_h,
                                           std::optional<double> scale_w) {
  TORCH_CHECK(input_size.size() == 4, "input_size must have 4 elements");
  check_bilinear(grad_output, {input_size[2], input_size[3]}, "grad_output");
  TORCH_CHECK(grad_output.size(0) == input_size[0] && grad_output.size(1) == input_size[1],
              "grad_output batch/channels ", grad_output.sizes(),
              " do not match input_size ", input_size);
  c10::cuda::CUDAGuard guard(grad_output.device());
  const auto fmt = layout_of(grad_output);
  const at::Tensor g = grad_output.contiguous(fmt);
  at::Tensor gx = at::empty(input_size, g.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  const int64_t V = planes_and_vec(g, fmt).second;
  const int64_t IH = input_size[2], IW = input_size[3], OH = g.size(2), OW = g.size(3);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bilinear_upsample_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor rows = at::empty({input_size[0] * input_size[1] * IH * OW},
                                g.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    auto launch = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      bilinear_backward_rows_kernel<scalar_t, index_t>
          <<<grid_for(rows.numel()), kThreads, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), rows.mutable_data_ptr<acc_t>(), rows.numel(), IH,
              OH, OW, V, align_corners, scale_h.value_or(-1.0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bilinear_backward_cols_kernel<scalar_t, index_t>
          <<<grid_for(gx.numel()), kThreads, 0, stream>>>(
              rows.const_data_ptr<acc_t>(), gx.mutable_data_ptr<scalar_t>(), gx.numel(), IW, OW,
              V, align_corners, scale_w.value_or(-1.0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (fits_int32({g.numel(), rows.numel(), gx.numel()})) {
      launch(int32_t(0));
    } else {
      launch(int64_t(0));
    }
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  m.impl("bilinear_upsample", &bilinear_upsample_cuda);
  m.impl("bilinear_upsample_backward", &bilinear_upsample_backward_cuda);
}

}  // namespace fcn_kernels
