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

#include <vector>

#include "../common.h"

namespace fcn_kernels {
namespace {

template <typename acc_t>
std::vector<LinearTap<acc_t>> forward_taps(int64_t in, int64_t out, bool align_corners,
                                           double scale) {
  const acc_t ratio = linear_ratio<acc_t>(in, out, align_corners, scale);
  std::vector<LinearTap<acc_t>> taps(out);
  for (int64_t o = 0; o < out; ++o) taps[o] = linear_tap<acc_t>(ratio, o, in, out, align_corners);
  return taps;
}

// For each source index i, the (output index, weight) pairs that read it, in
// increasing output order (CSR). Built with the same range search the CUDA
// backward uses, so CPU tests cover that arithmetic too.
template <typename acc_t>
struct Gather {
  std::vector<int64_t> start, index;
  std::vector<acc_t> weight;
};

template <typename acc_t>
Gather<acc_t> backward_gather(int64_t in, int64_t out, bool align_corners, double scale) {
  const acc_t ratio = linear_ratio<acc_t>(in, out, align_corners, scale);
  Gather<acc_t> g;
  g.start.reserve(in + 1);
  g.start.push_back(0);
  for (int64_t i = 0; i < in; ++i) {
    const int64_t lo = linear_first_output<acc_t>(ratio, i - 1, in, out, align_corners);
    const int64_t hi = linear_first_output<acc_t>(ratio, i + 1, in, out, align_corners);
    for (int64_t o = lo; o < hi; ++o) {
      const acc_t w = linear_weight(linear_tap<acc_t>(ratio, o, in, out, align_corners), i);
      if (w != acc_t(0)) {
        g.index.push_back(o);
        g.weight.push_back(w);
      }
    }
    g.start.push_back(static_cast<int64_t>(g.index.size()));
  }
  return g;
}

// Rows are (plane, row) pairs; grain chosen so a task holds roughly 32k elements.
inline int64_t row_grain(int64_t row_elems) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_elems));
}

template <typename scalar_t>
void forward_kernel(const scalar_t* x, scalar_t* y, int64_t P, int64_t IH, int64_t IW,
                    int64_t OH, int64_t OW, int64_t V, bool align_corners, double scale_h,
                    double scale_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto th = forward_taps<acc_t>(IH, OH, align_corners, scale_h);
  const auto tw = forward_taps<acc_t>(IW, OW, align_corners, scale_w);
  const int64_t in_row = IW * V, out_row = OW * V;
  at::parallel_for(0, P * OH, row_grain(out_row), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> blend(in_row);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / OH, oh = r % OH;
      const LinearTap<acc_t>& t = th[oh];
      const scalar_t* x0 = x + (p * IH + t.i0) * in_row;
      const scalar_t* x1 = x + (p * IH + t.i1) * in_row;
      for (int64_t k = 0; k < in_row; ++k) {
        blend[k] = t.l0 * static_cast<acc_t>(x0[k]) + t.l1 * static_cast<acc_t>(x1[k]);
      }
      scalar_t* yr = y + r * out_row;
      for (int64_t ow = 0; ow < OW; ++ow) {
        const LinearTap<acc_t>& s = tw[ow];
        const acc_t* a = blend.data() + s.i0 * V;
        const acc_t* b = blend.data() + s.i1 * V;
        scalar_t* yo = yr + ow * V;
        for (int64_t c = 0; c < V; ++c) yo[c] = static_cast<scalar_t>(s.l0 * a[c] + s.l1 * b[c]);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* g, scalar_t* gx, int64_t P, int64_t IH, int64_t IW,
                     int64_t OH, int64_t OW, int64_t V, bool align_corners, double scale_h,
                     double scale_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto gh = backward_gather<acc_t>(IH, OH, align_corners, scale_h);
  const auto gw = backward_gather<acc_t>(IW, OW, align_corners, scale_w);
  const int64_t in_row = IW * V, out_row = OW * V;
  at::parallel_for(0, P * IH, row_grain(out_row), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(out_row), sum(V);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / IH, ih = r % IH;
      // Vertical: sum of the output rows that read input row ih.
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t k = gh.start[ih]; k < gh.start[ih + 1]; ++k) {
        const acc_t w = gh.weight[k];
        const scalar_t* gr = g + (p * OH + gh.index[k]) * out_row;
        for (int64_t j = 0; j < out_row; ++j) acc[j] += w * static_cast<acc_t>(gr[j]);
      }
      // Horizontal: each input column gathers the output columns that read it.
      scalar_t* gxr = gx + r * in_row;
      for (int64_t iw = 0; iw < IW; ++iw) {
        std::fill(sum.begin(), sum.end(), acc_t(0));
        for (int64_t k = gw.start[iw]; k < gw.start[iw + 1]; ++k) {
          const acc_t w = gw.weight[k];
          const acc_t* a = acc.data() + gw.index[k] * V;
          for (int64_t c = 0; c < V; ++c) sum[c] += w * a[c];
        }
        scalar_t* out = gxr + iw * V;
        for (int64_t c = 0; c < V; ++c) out[c] = static_cast<scalar_t>(sum[c]);
      }
    }
  });
}

// (P, V) of the (P, H, W, V) view for a tensor in `fmt`.
inline std::pair<int64_t, int64_t> planes_and_vec(const at::Tensor& t, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::ChannelsLast) return {t.size(0), t.size(1)};
  return {t.size(0) * t.size(1), 1};
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
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), P,
                             x.size(2), x.size(3), OH, OW, V, align_corners,
                             scale_h.value_or(-1.0), scale_w.value_or(-1.0));
  });
  return y;
}

at::Tensor bilinear_upsample_backward_cpu(const at::Tensor& grad_output,
                                          at::IntArrayRef input_size, bool align_corners,
                                          std::optional<double> scale_h,
                                          std::optional<double> scale_w) {
  TORCH_CHECK(input_size.size() == 4, "input_size must have 4 elements");
  check_bilinear(grad_output, {input_size[2], input_size[3]}, "grad_output");
  TORCH_CHECK(grad_output.size(0) == input_size[0] && grad_output.size(1) == input_size[1],
              "grad_output batch/channels ", grad_output.sizes(),
              " do not match input_size ", input_size);
  const auto fmt = layout_of(grad_output);
  const at::Tensor g = grad_output.contiguous(fmt);
  at::Tensor gx = at::empty(input_size, g.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  const auto [P, V] = planes_and_vec(g, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bilinear_upsample_backward_cpu", [&] {
    backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), P,
                              input_size[2], input_size[3], g.size(2), g.size(3), V,
                              align_corners, scale_h.value_or(-1.0), scale_w.value_or(-1.0));
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CPU, m) {
  m.impl("bilinear_upsample", &bilinear_upsample_cpu);
  m.impl("bilinear_upsample_backward", &bilinear_upsample_backward_cpu);
}

}  // namespace fcn_kernels
