// Separable 2-D linear maps on CPU: dst = (Mh x Mw) src, each axis a sparse 1-D map.
//
// Used by bilinear upsampling (forward, and backward as the transposed maps) and by the
// transposed convolution when its weight is one rank-1 filter on the channel diagonal
// (FCN's bilinear upsampling weight): both are "blend a few source rows, each blended
// from a few source columns". Tensors are seen as (P, H, W, V) (common/tensor.h), so a spatial
// row is W*V contiguous elements in NCHW and channels_last alike.
//
// Every destination element is written once by one task in a fixed order: no atomics,
// same bits every run. The row loops are leaves compiled for the CPU's ISA (isa.h).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/isa.h"
#include "common/parallel.h"

namespace fcn_kernels {

// A 1-D linear map as CSR: destination index d reads sources index[k] with weight[k]
// for k in [start[d], start[d+1]), in a fixed order.
template <typename acc_t>
struct Csr {
  std::vector<int64_t> start{0}, index;
  std::vector<acc_t> weight;
  bool two_taps = false;  // every row has exactly two entries (see close())
  void add(int64_t i, acc_t w) {
    index.push_back(i);
    weight.push_back(w);
  }
  void close_row() { start.push_back(static_cast<int64_t>(index.size())); }
  // Call once all rows are added: detects the two-tap form the fast loops use.
  void close() {
    two_taps = start.size() > 1;
    for (size_t d = 0; d + 1 < start.size(); ++d) two_taps &= start[d + 1] - start[d] == 2;
  }
};

namespace sep {

// r[dw, :] = sum_k mw(dw, k) * s[mw.index[k], :], V channels per column (Vec: see
// with_vec in common/parallel.h).
template <typename scalar_t, typename Vec>
FK_INLINE void hpass(const scalar_t* __restrict__ s, at::opmath_type<scalar_t>* __restrict__ r,
                     int64_t DW, Vec V, const int64_t* __restrict__ start,
                     const int64_t* __restrict__ idx,
                     const at::opmath_type<scalar_t>* __restrict__ wt, bool two_taps) {
  using acc_t = at::opmath_type<scalar_t>;
  if (two_taps) {
    for (int64_t dw = 0; dw < DW; ++dw) {
      const scalar_t* a = s + idx[2 * dw] * V;
      const scalar_t* b = s + idx[2 * dw + 1] * V;
      const acc_t wa = wt[2 * dw], wb = wt[2 * dw + 1];
      acc_t* out = r + dw * V;
      for (int64_t c = 0; c < V; ++c) {
        out[c] = wa * static_cast<acc_t>(a[c]) + wb * static_cast<acc_t>(b[c]);
      }
    }
    return;
  }
  for (int64_t dw = 0; dw < DW; ++dw) {
    acc_t* out = r + dw * V;
    for (int64_t c = 0; c < V; ++c) out[c] = acc_t(0);
    for (int64_t k = start[dw]; k < start[dw + 1]; ++k) {
      const acc_t w = wt[k];
      const scalar_t* in = s + idx[k] * V;
      for (int64_t c = 0; c < V; ++c) out[c] += w * static_cast<acc_t>(in[c]);
    }
  }
}
FK_MULTI_ISA(hpass)

// out[j] = wa * a[j] + wb * b[j], rounded to scalar_t.
template <typename scalar_t>
FK_INLINE void blend2(scalar_t* __restrict__ out, const at::opmath_type<scalar_t>* __restrict__ a,
                      const at::opmath_type<scalar_t>* __restrict__ b, at::opmath_type<scalar_t> wa,
                      at::opmath_type<scalar_t> wb, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<scalar_t>(wa * a[j] + wb * b[j]);
}
FK_MULTI_ISA(blend2)

// acc[j] (+)= w * r[j]; `first` overwrites instead of adding (saves a zero-fill pass).
template <typename acc_t>
FK_INLINE void axpy(acc_t* __restrict__ acc, const acc_t* __restrict__ r, acc_t w, int64_t n,
                    bool first) {
  if (first) {
    for (int64_t j = 0; j < n; ++j) acc[j] = w * r[j];
  } else {
    for (int64_t j = 0; j < n; ++j) acc[j] += w * r[j];
  }
}
FK_MULTI_ISA(axpy)

template <typename scalar_t>
FK_INLINE void store(scalar_t* __restrict__ out, const at::opmath_type<scalar_t>* __restrict__ acc,
                     int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<scalar_t>(acc[j]);
}
FK_MULTI_ISA(store)

}  // namespace sep

// dst[p, dh, dw, :] = sum_h mh(dh, sh) * sum_w mw(dw, sw) * src[p, sh, sw, :]
// For a block of destination rows, first apply mw to the source rows the block reads
// (into float row buffers, each source row once), then blend those rows with mh. Both
// passes walk contiguous memory.
template <typename scalar_t, typename Vec>
void separable_apply(const scalar_t* src, scalar_t* dst, int64_t P, int64_t SH, int64_t SW,
                     int64_t DH, int64_t DW, Vec V, const Csr<at::opmath_type<scalar_t>>& mh,
                     const Csr<at::opmath_type<scalar_t>>& mw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t src_row = SW * V, dst_row = DW * V;
  // Chunks of destination rows (common/parallel.h): a destination element is about one
  // unit, a blend of rows whose horizontal pass the chunk computes once.
  const int64_t rows_per_task = items_per_chunk(P, DH, dst_row);
  const int64_t chunks = (DH + rows_per_task - 1) / rows_per_task;
  at::parallel_for(0, P * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> rows, acc(dst_row);
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
          sep::hpass_isa<scalar_t, Vec>(sp + sh * src_row, r, DW, V, mw.start.data(),
                                        mw.index.data(), mw.weight.data(), mw.two_taps);
          done[sh - s_lo] = 1;
        }
        return r;
      };
      for (int64_t dh = d_begin; dh < d_end; ++dh) {
        scalar_t* out = dst + (p * DH + dh) * dst_row;
        const int64_t k0 = mh.start[dh], k1 = mh.start[dh + 1];
        if (k1 - k0 == 2) {  // the common case: a two-row blend
          const acc_t* a = hrow(mh.index[k0]);
          const acc_t* b = hrow(mh.index[k0 + 1]);
          sep::blend2_isa<scalar_t>(out, a, b, mh.weight[k0], mh.weight[k0 + 1], dst_row);
          continue;
        }
        // Any number of rows (backward maps, crops at the border).
        if (k1 == k0) std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = k0; k < k1; ++k) {
          sep::axpy_isa<acc_t>(acc.data(), hrow(mh.index[k]), mh.weight[k], dst_row, k == k0);
        }
        sep::store_isa<scalar_t>(out, acc.data(), dst_row);
      }
    }
  });
}

// separable_apply on tensors: src and dst are (P, H, W, V) views with the given V.
template <typename scalar_t>
void separable_apply(const at::Tensor& src, at::Tensor& dst, int64_t P, int64_t V,
                     const Csr<at::opmath_type<scalar_t>>& mh,
                     const Csr<at::opmath_type<scalar_t>>& mw) {
  with_vec(V, [&](auto vec) {
    separable_apply<scalar_t, decltype(vec)>(src.const_data_ptr<scalar_t>(),
                                             dst.mutable_data_ptr<scalar_t>(), P, src.size(2),
                                             src.size(3), dst.size(2), dst.size(3), vec, mh, mw);
  });
}

}  // namespace fcn_kernels
