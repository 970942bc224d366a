// Bilinear upsampling, GPU code: kernel bodies and host side, generic in the launcher
// (gpu/launch.h). Compiled for CUDA by bilinear/cuda.cu and for CPU emulation by
// bilinear/emu.cpp.
//
// Tensors are seen as (P, H, W, V) (common/tensor.h): P = N*C planes of V = 1 for NCHW,
// P = N images of V = C interleaved channels for channels_last, so an image row is
// W*V contiguous elements in both layouts.
//
// Forward: grid (row chunks, output rows, plane chunks); a thread owns one position j of
// an output row, computes its two row taps and two column taps once, then loops over
// planes: per element 4 loads (mostly cache hits), 3 multiply-adds and 1 store, no
// division. Ratios come from the host in the op-math type, so float kernels do no FP64.
//
// Backward: two gather passes, no atomics (same bits every run), as on the CPU:
//   tables: for every input row/column i the range [lo, hi) of outputs that read it,
//           and for every output row/column its taps (one thread per entry);
//   pass 1: rows[p, ih, j] = sum_{oh in range(ih)} w(oh, ih) * g[p, oh, j]
//           (float buffer; g read through its strides, so expanded or strided
//           gradients, e.g. from y.sum(), are never copied);
//   pass 2: gx[p, ih, iw, c] = sum_{ow in range(iw)} w(ow, iw) * rows[p, ih, ow, c].
// FCN_KERNELS_BILINEAR_BACKWARD=direct (for the GPU run to decide; default "separable",
// the above): tables, then one gather pass, thread (iw*V + c, ih, plane chunk) summing
// its whole window of g with weights from both tables. No float row buffer: at x2 the
// separable passes move g + 2 x (g / 2 as floats) + gx, the direct pass g + gx (the
// minimum), for ~4 loads of each g element (L1) instead of ~2.
#pragma once

#include <ATen/Dispatch.h>
#include <torch/library.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <optional>

#include "bilinear/args.h"
#include "gpu/env.h"
#include "gpu/launch.h"

namespace fcn_kernels {
namespace bilinear_gpu {

constexpr int kThreads = 256;

// Grid (x: chunks of a row of `row` elements, y: rows, z: plane chunks) with enough
// blocks to fill the device; every thread loops over planes z, z + grid.z, ...
inline Extent plane_grid(int64_t row, int64_t rows, int64_t planes, int sm_count) {
  Extent g;
  g.x = ceil_div(row, kThreads);
  g.y = std::min<int64_t>(rows, kMaxGridYZ);
  const int64_t want = int64_t(sm_count) * 8;
  g.z = std::clamp<int64_t>(ceil_div(want, g.x * g.y), 1, std::min(planes, kMaxGridYZ));
  return g;
}

// The position a thread owns in an image row of `width` pixels of V channels: j along
// the row (grid.x), its pixel w and channel c. False past the row's end.
struct RowPos {
  int j, w, c;
};

FK_HD bool row_position(const Thread& t, int width, int V, RowPos& r) {
  r.j = static_cast<int>(t.block.x * t.block_dim.x + t.thread.x);
  if (r.j >= width * V) return false;
  r.w = V == 1 ? r.j : r.j / V;  // one division per thread, none for NCHW
  r.c = r.j - r.w * V;
  return true;
}

template <typename scalar_t, typename index_t>
struct Forward {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  scalar_t* y;
  int IH, IW, OH, OW, V, P;
  acc_t rh, rw;
  bool align_corners;

  FK_HD void operator()(const Thread& t) const {
    RowPos at;
    if (!row_position(t, OW, V, at)) return;
    const int row = OW * V, j = at.j;
    const auto tw = linear_tap<acc_t, int>(rw, at.w, IW, OW, align_corners);
    const index_t w0 = index_t(tw.i0) * V + at.c, w1 = index_t(tw.i1) * V + at.c;
    const index_t in_plane = index_t(IH) * IW * V, out_plane = index_t(OH) * row;
    for (int oh = t.block.y; oh < OH; oh += t.grid.y) {
      const auto th = linear_tap<acc_t, int>(rh, oh, IH, OH, align_corners);
      const index_t r0 = index_t(th.i0) * IW * V, r1 = index_t(th.i1) * IW * V;
      const index_t o = index_t(oh) * row + j;
      for (int p = t.block.z; p < P; p += t.grid.z) {
        const scalar_t* xp = x + p * in_plane;
        const acc_t top =
            tw.l0 * static_cast<acc_t>(xp[r0 + w0]) + tw.l1 * static_cast<acc_t>(xp[r0 + w1]);
        const acc_t bot =
            tw.l0 * static_cast<acc_t>(xp[r1 + w0]) + tw.l1 * static_cast<acc_t>(xp[r1 + w1]);
        y[p * out_plane + o] = static_cast<scalar_t>(th.l0 * top + th.l1 * bot);
      }
    }
  }
};

// One axis of the backward: for input index i, the outputs [lo[i], hi[i]) that read
// it; for output index o, its taps.
template <typename acc_t>
struct AxisTable {
  int* lo;
  int* hi;
  LinearTap<acc_t, int>* taps;
};

template <typename acc_t>
struct Tables {
  AxisTable<acc_t> h, w;
  int IH, IW, OH, OW;
  acc_t rh, rw;
  bool align_corners;

  // Thread e < IH + IW + OH + OW fills one entry (the binary searches run once per
  // input index here, not once per element in the passes).
  FK_HD void operator()(const Thread& t) const {
    int e = static_cast<int>(t.block.x * t.block_dim.x + t.thread.x);
    if (e < IH + OH) {
      fill(h, e, IH, OH, rh);
    } else {
      fill(w, e - IH - OH, IW, OW, rw);
    }
  }

  FK_HD void fill(const AxisTable<acc_t>& a, int e, int in, int out, acc_t r) const {
    if (e < in) {
      a.lo[e] = static_cast<int>(linear_first_output<acc_t>(r, e - 1, in, out, align_corners));
      a.hi[e] = static_cast<int>(linear_first_output<acc_t>(r, e + 1, in, out, align_corners));
    } else if (e < in + out) {
      a.taps[e - in] = linear_tap<acc_t, int>(r, e - in, in, out, align_corners);
    }
  }
};

template <typename acc_t>
FK_HD acc_t tap_weight(const LinearTap<acc_t, int>& tap, int i) {
  return (tap.i0 == i ? tap.l0 : acc_t(0)) + (tap.i1 == i ? tap.l1 : acc_t(0));
}

// Pass 1, thread (j, ih, plane chunk): rows[p, ih, j] for its planes. g is read through
// the strides of (N, C, H, W): plane p = (n, c) for NCHW, n for channels_last.
template <typename scalar_t, typename index_t>
struct BackwardRows {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g;
  acc_t* rows;
  AxisTable<acc_t> h;
  int IH, OH, OW, V, P, C;
  index_t sn, sc, sh, sw;  // grad_output's element strides

  FK_HD void operator()(const Thread& t) const {
    RowPos at;
    if (!row_position(t, OW, V, at)) return;
    const int row = OW * V, j = at.j;
    for (int ih = t.block.y; ih < IH; ih += t.grid.y) {
      const int lo = h.lo[ih], hi = h.hi[ih];
      for (int p = t.block.z; p < P; p += t.grid.z) {
        const int n = V == 1 ? p / C : p, c = V == 1 ? p - n * C : at.c;
        const scalar_t* gp = g + n * sn + c * sc + at.w * sw;
        acc_t s = acc_t(0);
        for (int oh = lo; oh < hi; ++oh) {
          s += tap_weight(h.taps[oh], ih) * static_cast<acc_t>(gp[oh * sh]);
        }
        rows[(index_t(p) * IH + ih) * row + j] = s;
      }
    }
  }
};

// Pass 2, thread (jj = iw*V + c, ih, plane chunk): gx[p, ih, iw, c].
template <typename scalar_t, typename index_t>
struct BackwardCols {
  using acc_t = at::opmath_type<scalar_t>;
  AxisTable<acc_t> w;  // the column taps
  int IH, IW, OW, V, P;
  const acc_t* rows;
  scalar_t* gx;

  FK_HD void operator()(const Thread& t) const {
    RowPos at;
    if (!row_position(t, IW, V, at)) return;
    const int row = IW * V, jj = at.j, iw = at.w, c = at.c;
    const int lo = w.lo[iw], hi = w.hi[iw];
    for (int ih = t.block.y; ih < IH; ih += t.grid.y) {
      for (int p = t.block.z; p < P; p += t.grid.z) {
        const index_t r = index_t(p) * IH + ih;
        const acc_t* rp = rows + r * OW * V + c;
        acc_t s = acc_t(0);
        for (int ow = lo; ow < hi; ++ow) s += tap_weight(w.taps[ow], iw) * rp[ow * V];
        gx[r * row + jj] = static_cast<scalar_t>(s);
      }
    }
  }
};

// The direct backward's thread (jj = iw*V + c, ih, plane chunk): gx[p, ih, iw, c] =
// sum_oh w(oh, ih) * sum_ow w(ow, iw) * g[p, oh, ow, c]. The column weights, fixed per
// thread, are kept in registers for windows of up to kDirectCols columns (scales up to
// ~4 with align_corners=False); wider windows look them up per term.
constexpr int kDirectCols = 6;
#ifdef __CUDA_ARCH__
#define FK_BILINEAR_UNROLL _Pragma("unroll")  // cw[] must stay in registers
#else
#define FK_BILINEAR_UNROLL
#endif

template <typename scalar_t, typename index_t>
struct BackwardDirect {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g;
  scalar_t* gx;
  AxisTable<acc_t> h, w;
  int IH, IW, V, P, C;
  index_t sn, sc, sh, sw;  // grad_output's element strides

  FK_HD void operator()(const Thread& t) const {
    RowPos at;
    if (!row_position(t, IW, V, at)) return;
    const int lo = w.lo[at.w], cols = w.hi[at.w] - lo;
    acc_t cw[kDirectCols];
    FK_BILINEAR_UNROLL
    for (int k = 0; k < kDirectCols; ++k)
      cw[k] = k < cols ? tap_weight(w.taps[lo + k], at.w) : acc_t(0);
    for (int ih = t.block.y; ih < IH; ih += t.grid.y) {
      const int hlo = h.lo[ih], hhi = h.hi[ih];
      for (int p = t.block.z; p < P; p += t.grid.z) {
        const int n = V == 1 ? p / C : p, c = V == 1 ? p - n * C : at.c;
        const scalar_t* gp = g + n * sn + c * sc + lo * sw;
        acc_t s = acc_t(0);
        for (int oh = hlo; oh < hhi; ++oh) {
          const scalar_t* gr = gp + oh * sh;
          acc_t r = acc_t(0);
          if (cols <= kDirectCols) {
            FK_BILINEAR_UNROLL
            for (int k = 0; k < kDirectCols; ++k) {
              if (k < cols) r += cw[k] * static_cast<acc_t>(gr[k * sw]);
            }
          } else {
            for (int k = 0; k < cols; ++k) {
              r += tap_weight(w.taps[lo + k], at.w) * static_cast<acc_t>(gr[k * sw]);
            }
          }
          s += tap_weight(h.taps[oh], ih) * r;
        }
        gx[(index_t(p) * IH + ih) * (IW * V) + at.j] = static_cast<scalar_t>(s);
      }
    }
  }
};

template <typename L>
at::Tensor forward(const at::Tensor& self, at::IntArrayRef output_size, bool align_corners,
                   std::optional<double> scale_h, std::optional<double> scale_w) {
  check_bilinear(self, output_size, "input");
  typename L::Guard guard(self.device());
  const auto fmt = layout_of(self);
  const at::Tensor x = self.contiguous(fmt);
  at::Tensor y = at::empty({x.size(0), x.size(1), output_size[0], output_size[1]},
                           x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const auto [P, V] = planes_and_vec(x, fmt);
  const int IH = x.size(2), IW = x.size(3), OH = output_size[0], OW = output_size[1];
  TORCH_CHECK_VALUE(int64_t(OW) * V < (int64_t(1) << 31) && P < (int64_t(1) << 31),
                    "bilinear_upsample: an output row or the plane count exceeds 2^31");
  const Extent grid = plane_grid(int64_t(OW) * V, OH, P, L::sm_count());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bilinear_gpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t rh = linear_ratio<acc_t>(IH, OH, align_corners, scale_h.value_or(-1.0));
    const acc_t rw = linear_ratio<acc_t>(IW, OW, align_corners, scale_w.value_or(-1.0));
    with_index_type(fits_int32({x.numel(), y.numel()}), [&](auto index_zero) {
      using index_t = decltype(index_zero);
      L::launch("bilinear_upsample", grid, Extent{kThreads}, 0,
                Forward<scalar_t, index_t>{
                    x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), IH, IW, OH, OW,
                    static_cast<int>(V), static_cast<int>(P), rh, rw, align_corners});
    });
  });
  return y;
}

template <typename L>
at::Tensor backward(const at::Tensor& grad_output, at::IntArrayRef input_size, bool align_corners,
                    std::optional<double> scale_h, std::optional<double> scale_w) {
  check_bilinear_backward(grad_output, input_size);
  const bool direct = env_choice("FCN_KERNELS_BILINEAR_BACKWARD", {"separable", "direct"}) == 1;
  typename L::Guard guard(grad_output.device());
  const auto fmt = layout_of(grad_output);
  const at::Tensor& g = grad_output;  // read through its strides, never copied
  at::Tensor gx = at::empty(input_size, g.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  const auto [P, V] = planes_and_vec(gx, fmt);
  const int IH = input_size[2], IW = input_size[3], OH = g.size(2), OW = g.size(3);
  const int C = g.size(1);
  TORCH_CHECK_VALUE(int64_t(OW) * V < (int64_t(1) << 31) && P < (int64_t(1) << 31),
                    "bilinear_upsample_backward: a row or the plane count exceeds 2^31");
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, g.scalar_type(), "bilinear_backward_gpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
        const acc_t rh = linear_ratio<acc_t>(IH, OH, align_corners, scale_h.value_or(-1.0));
        const acc_t rw = linear_ratio<acc_t>(IW, OW, align_corners, scale_w.value_or(-1.0));
        // One int32 buffer: lo/hi of both axes, then the taps of both axes.
        static_assert(sizeof(LinearTap<acc_t, int>) % sizeof(int) == 0, "tap layout");
        const int64_t tap_ints = sizeof(LinearTap<acc_t, int>) / sizeof(int);
        const int64_t n_ranges = 2 * (IH + IW), n_taps = OH + OW;
        at::Tensor table =
            at::empty({n_ranges + n_taps * tap_ints + tap_ints}, g.options().dtype(at::kInt));
        int* base = table.mutable_data_ptr<int>();
        // Taps start at an offset aligned for acc_t (double taps need 8 bytes).
        int64_t tap_offset = n_ranges;
        tap_offset += (tap_offset * sizeof(int)) % alignof(LinearTap<acc_t, int>) ? 1 : 0;
        auto* taps = reinterpret_cast<LinearTap<acc_t, int>*>(base + tap_offset);
        const AxisTable<acc_t> th{base, base + IH, taps};
        const AxisTable<acc_t> tw{base + 2 * IH, base + 2 * IH + IW, taps + OH};
        L::launch("bilinear_backward_tables", Extent{ceil_div(IH + IW + OH + OW, kThreads)},
                  Extent{kThreads}, 0,
                  Tables<acc_t>{th, tw, IH, IW, OH, OW, rh, rw, align_corners});
        at::Tensor rows;
        if (!direct) rows = at::empty({P * IH * OW * V}, g.options().dtype(acc_dtype));
        const Extent grid1 = plane_grid(int64_t(OW) * V, IH, P, L::sm_count());
        const Extent grid2 = plane_grid(int64_t(IW) * V, IH, P, L::sm_count());
        // g's furthest element offset bounds its index type (strides may be anything).
        const bool small = fits_int32({element_span(g), direct ? 0 : rows.numel(), gx.numel()});
        with_index_type(small, [&](auto index_zero) {
          using index_t = decltype(index_zero);
          const index_t sn(g.stride(0)), sc(g.stride(1)), sh(g.stride(2)), sw(g.stride(3));
          if (direct) {
            L::launch("bilinear_backward_direct", grid2, Extent{kThreads}, 0,
                      BackwardDirect<scalar_t, index_t>{
                          g.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), th, tw, IH,
                          IW, static_cast<int>(V), static_cast<int>(P), C, sn, sc, sh, sw});
            return;
          }
          L::launch("bilinear_backward_rows", grid1, Extent{kThreads}, 0,
                    BackwardRows<scalar_t, index_t>{
                        g.const_data_ptr<scalar_t>(), rows.mutable_data_ptr<acc_t>(), th, IH, OH,
                        OW, static_cast<int>(V), static_cast<int>(P), C, sn, sc, sh, sw});
          L::launch("bilinear_backward_cols", grid2, Extent{kThreads}, 0,
                    BackwardCols<scalar_t, index_t>{
                        tw, IH, IW, OW, static_cast<int>(V), static_cast<int>(P),
                        rows.const_data_ptr<acc_t>(), gx.mutable_data_ptr<scalar_t>()});
        });
      });
  return gx;
}

// The operators' registrations, for the launcher's library and dispatch key
// (bilinear/cuda.cu: fcn_kernels/CUDA, bilinear/emu.cpp: fcn_kernels_emu/CPU).
template <typename L>
void register_ops(torch::Library& m) {
  m.impl("bilinear_upsample", &forward<L>);
  m.impl("bilinear_upsample_backward", &backward<L>);
}

#undef FK_BILINEAR_UNROLL

}  // namespace bilinear_gpu
}  // namespace fcn_kernels
