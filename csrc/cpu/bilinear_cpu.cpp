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

// A 1-D linear map as CSR: destination index d reads sources index[k] with weight[k]
// for k in [start[d], start[d+1]), in a fixed order.
template <typename acc_t>
struct Csr {
  std::vector<int64_t> start{0}, index;
  std::vector<acc_t> weight;
  bool two_taps = false;  // every row has exactly two entries (the forward map)
  void add(int64_t i, acc_t w) {
    index.push_back(i);
    weight.push_back(w);
  }
  void close_row() { start.push_back(static_cast<int64_t>(index.size())); }
};

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
  m.two_taps = true;
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
  return m;
}

// dst[p, dh, dw, :] = sum_h mh(dh, sh) * sum_w mw(dw, sw) * src[p, sh, sw, :]
// Separable: for a block of destination rows, first apply mw to the source rows the
// block reads (into a float row buffer, each source row once), then blend those rows
// with mh. Both passes walk contiguous memory; the vertical one vectorises.
// kPlanar (V == 1, NCHW) lets the compiler drop the innermost loop.
template <typename scalar_t, bool kPlanar>
void separable_apply(const scalar_t* src, scalar_t* dst, int64_t P, int64_t SH, int64_t SW,
                     int64_t DH, int64_t DW, int64_t V_,
                     const Csr<at::opmath_type<scalar_t>>& mh,
                     const Csr<at::opmath_type<scalar_t>>& mw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t V = kPlanar ? 1 : V_;
  const int64_t src_row = SW * V, dst_row = DW * V;
  // ~64k destination elements per task, but enough tasks for every thread.
  int64_t rows_per_task = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, dst_row));
  const int64_t want_tasks = 4 * at::get_num_threads();
  if (P * ((DH + rows_per_task - 1) / rows_per_task) < want_tasks) {
    rows_per_task = std::max<int64_t>(1, (P * DH) / want_tasks);
  }
  const int64_t chunks = (DH + rows_per_task - 1) / rows_per_task;
  at::parallel_for(0, P * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> rows, acc;
    std::vector<char> done;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / chunks;
      const int64_t d_begin = (task % chunks) * rows_per_task;
      const int64_t d_end = std::min(DH, d_begin + rows_per_task);
      // Source rows this block reads (a contiguous index range: the maps are monotone).
      int64_t s_lo = SH, s_hi = 0;
      for (int64_t k = mh.start[d_begin]; k < mh.start[d_end]; ++k) {
        s_lo = std::min(s_lo, mh.index[k]);
        s_hi = std::max(s_hi, mh.index[k] + 1);
      }
      if (s_hi > s_lo) {
        rows.resize((s_hi - s_lo) * dst_row);
        done.assign(s_hi - s_lo, 0);
      }
      const scalar_t* sp = src + p * SH * src_row;
      auto hrow = [&](int64_t sh) -> const acc_t* {
        acc_t* r = rows.data() + (sh - s_lo) * dst_row;
        if (!done[sh - s_lo]) {
          const scalar_t* s = sp + sh * src_row;
          if (mw.two_taps) {  // forward: every output column blends two columns
            const int64_t* idx = mw.index.data();
            const acc_t* wt = mw.weight.data();
            for (int64_t dw = 0; dw < DW; ++dw) {
              const scalar_t* a = s + idx[2 * dw] * V;
              const scalar_t* b = s + idx[2 * dw + 1] * V;
              const acc_t wa = wt[2 * dw], wb = wt[2 * dw + 1];
              acc_t* out = r + dw * V;
              for (int64_t c = 0; c < V; ++c) {
                out[c] = wa * static_cast<acc_t>(a[c]) + wb * static_cast<acc_t>(b[c]);
              }
            }
          } else {
            for (int64_t dw = 0; dw < DW; ++dw) {
              acc_t* out = r + dw * V;
              for (int64_t c = 0; c < V; ++c) out[c] = acc_t(0);
              for (int64_t k = mw.start[dw]; k < mw.start[dw + 1]; ++k) {
                const acc_t w = mw.weight[k];
                const scalar_t* in = s + mw.index[k] * V;
                for (int64_t c = 0; c < V; ++c) out[c] += w * static_cast<acc_t>(in[c]);
              }
            }
          }
          done[sh - s_lo] = 1;
        }
        return r;
      };
      for (int64_t dh = d_begin; dh < d_end; ++dh) {
        scalar_t* out = dst + (p * DH + dh) * dst_row;
        const int64_t k0 = mh.start[dh], k1 = mh.start[dh + 1];
        if (k1 - k0 == 2) {  // the forward case: a two-row blend
          const acc_t* __restrict__ a = hrow(mh.index[k0]);
          const acc_t* __restrict__ b = hrow(mh.index[k0 + 1]);
          const acc_t wa = mh.weight[k0], wb = mh.weight[k0 + 1];
          for (int64_t j = 0; j < dst_row; ++j) out[j] = static_cast<scalar_t>(wa * a[j] + wb * b[j]);
          continue;
        }
        // General case (backward): a weighted sum of any number of rows.
        acc.assign(dst_row, acc_t(0));
        for (int64_t k = k0; k < k1; ++k) {
          const acc_t* __restrict__ r = hrow(mh.index[k]);
          const acc_t w = mh.weight[k];
          for (int64_t j = 0; j < dst_row; ++j) acc[j] += w * r[j];
        }
        for (int64_t j = 0; j < dst_row; ++j) out[j] = static_cast<scalar_t>(acc[j]);
      }
    }
  });
}

template <typename scalar_t>
void apply(const at::Tensor& src, at::Tensor& dst, int64_t P, int64_t V,
           const Csr<at::opmath_type<scalar_t>>& mh, const Csr<at::opmath_type<scalar_t>>& mw) {
  auto run = [&](auto planar) {
    separable_apply<scalar_t, decltype(planar)::value>(
        src.const_data_ptr<scalar_t>(), dst.mutable_data_ptr<scalar_t>(), P, src.size(2),
        src.size(3), dst.size(2), dst.size(3), V, mh, mw);
  };
  if (V == 1) run(std::true_type{}); else run(std::false_type{});
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
    apply<scalar_t>(x, y, P, V,
                    forward_map<acc_t>(x.size(2), OH, align_corners, scale_h.value_or(-1.0)),
                    forward_map<acc_t>(x.size(3), OW, align_corners, scale_w.value_or(-1.0)));
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
    using acc_t = at::opmath_type<scalar_t>;
    apply<scalar_t>(g, gx, P, V,
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
