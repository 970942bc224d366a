// Data-movement leaves of the phase decomposition (cpu_phase.cpp): padding the input,
// moving between the image and the GEMMs' block matrices, col2im and partial sums.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/isa.h"
#include "deconv/cpu.h"

namespace fcn_kernels {
namespace deconv_cpu {

// ---- data movement -------------------------------------------------------------
// Leaves for FK_MULTI_ISA (compiled for AVX-512 / AVX2 as well). TI is the image's
// element type, TB the buffers' (the GEMMs'); plain copies run on the unsigned integer
// of the element's size (Bits), which vectorises where bfloat16 / half structs do not.
template <typename T>
using Bits = std::conditional_t<sizeof(T) == 2, uint16_t,
                                std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;

template <typename TO, typename TI>
FK_INLINE TO cvt(TI v) {
  if constexpr (std::is_same_v<TO, TI>) {
    return v;
  } else {
    return static_cast<TO>(v);
  }
}

// Plain-data arguments of the leaves.
struct MoveArgs {
  int64_t r0, r1;                // block rows [r0, r1): row = n * nqh + (q_h - q0h)
  int64_t s_h, q0h, nqh, pre_h;  // PhaseAxis h
  int64_t s_w, nqw, pre_w, Wp;   // PhaseAxis w, blocks per block row
  int64_t M, channels, H, W;     // D's rows; the image's (group's) channels and size
  int64_t st[4];                 // the image's strides
};

inline MoveArgs move_args(const PhaseGeom& geom, int64_t r0, int64_t r1, int64_t channels,
                          int64_t H, int64_t W, at::IntArrayRef st) {
  return {r0,         r1,       geom.h.s,  geom.h.q0,  geom.h.nq,
          geom.h.pre, geom.w.s, geom.w.nq, geom.w.pre, geom.Wp,
          geom.M,     channels, H,         W,          {st[0], st[1], st[2], st[3]}};
}

// Zero-padded input planes: dst[(p * Hp + u) * Wp + v] = x[n, c, u0 + u, v0 + v] for the
// planes p = n * C + c in [p0, p1) (0 outside the image).
template <typename TI, typename TB>
FK_INLINE void pad_leaf(TB* __restrict__ dst, const TI* __restrict__ x, const MoveArgs& a,
                        int64_t Hp, int64_t u0, int64_t v0, int64_t p0, int64_t p1) {
  const int64_t Wp = a.Wp, sw = a.st[3];
  const int64_t lo = std::clamp<int64_t>(-v0, 0, Wp), hi = std::clamp<int64_t>(a.W - v0, lo, Wp);
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t u = 0; u < Hp; ++u) {
      TB* d = dst + (p * Hp + u) * Wp;
      const int64_t ih = u0 + u;
      if (ih < 0 || ih >= a.H) {
        for (int64_t v = 0; v < Wp; ++v) d[v] = TB(0);
        continue;
      }
      const TI* s = x + (p / a.channels) * a.st[0] + (p % a.channels) * a.st[1] + ih * a.st[2] +
                    (v0 + lo) * sw;
      for (int64_t v = 0; v < lo; ++v) d[v] = TB(0);
      if (sw == 1) {
        for (int64_t v = lo; v < hi; ++v) d[v] = cvt<TB>(s[v - lo]);
      } else {
        for (int64_t v = lo; v < hi; ++v) d[v] = cvt<TB>(s[(v - lo) * sw]);
      }
      for (int64_t v = hi; v < Wp; ++v) d[v] = TB(0);
    }
  }
}
FK_MULTI_ISA(pad_leaf)

// Along a crop row, b in [0, W) is in block j = (b + pre_w) / s_w - q0w at phase
// r = (b + pre_w) % s_w: d[r * ld + j] <-> img[b * is], an interleave of s_w rows of D.
template <bool kToImage, typename TI, typename TB>
FK_INLINE void mv(TI& i, TB& b) {
  if constexpr (kToImage) {
    i = cvt<TI>(b);
  } else {
    b = cvt<TB>(i);
  }
}
template <bool kToImage, int S, typename TI, typename TB>
FK_INLINE void interleave(TI* __restrict__ img, int64_t is, TB* __restrict__ d, int64_t ld,
                          int64_t s, int64_t r, int64_t W) {
  if (S > 0) s = S;  // a constant for the common strides, so that the loop vectorises
  int64_t b = 0;
  if (r != 0) {  // the first block, entered mid-way
    for (; r < s && b < W; ++r, ++b) mv<kToImage>(img[b * is], d[r * ld]);
    ++d;
  }
  const int64_t nj = (W - b) / s;
  TI* __restrict__ o = img + b * is;
  if (is == 1) {
    for (int64_t j = 0; j < nj; ++j) {
      for (int64_t k = 0; k < s; ++k) mv<kToImage>(o[j * s + k], d[k * ld + j]);
    }
  } else {
    for (int64_t j = 0; j < nj; ++j) {
      for (int64_t k = 0; k < s; ++k) mv<kToImage>(o[(j * s + k) * is], d[k * ld + j]);
    }
  }
  b += nj * s;
  d += nj;
  for (int64_t k = 0; b < W; ++b, ++k) mv<kToImage>(img[b * is], d[k * ld]);
}

// D (rows (co, r_h, r_w); columns: the blocks of rows [r0, r1), Wp per row) <-> the
// image (y or grad_output, from the group's first channel): img[n, co, a, b] =
// d[(co * s_h + r_h) * s_w + r_w][block]. Into D, the caller zeroes D once: positions
// outside the crop window are then never written, except in block rows that reach past
// the crop's top or bottom (the others are the same columns in every block row).
template <bool kToImage, typename TI, typename TB>
FK_INLINE void move_leaf(TI* img, TB* d, int64_t ld, const MoveArgs& a) {
  const int64_t sw = a.s_w, r = a.pre_w % sw;
  if (!kToImage) {  // block rows reaching past the crop's top or bottom: zero them first
    for (int64_t row = a.r0; row < a.r1; ++row) {
      const int64_t t = row % a.nqh;
      if ((t == 0 && a.pre_h % a.s_h != 0) || (t == a.nqh - 1 && (a.pre_h + a.H) % a.s_h != 0)) {
        for (int64_t m = 0; m < a.M; ++m) {
          TB* blk = d + m * ld + (row - a.r0) * a.Wp;
          for (int64_t j = 0; j < a.Wp; ++j) blk[j] = TB(0);
        }
      }
    }
  }
  for (int64_t row = a.r0; row < a.r1; ++row) {
    const int64_t n = row / a.nqh, Zq = (a.q0h + row % a.nqh) * a.s_h;
    TB* dcol = d + (row - a.r0) * a.Wp;
    for (int64_t rh = 0; rh < a.s_h; ++rh) {
      const int64_t y = Zq + rh - a.pre_h;
      if (y < 0 || y >= a.H) continue;
      TI* irow = img + n * a.st[0] + y * a.st[2];
      for (int64_t co = 0; co < a.channels; ++co) {
        TI* i = irow + co * a.st[1];
        TB* dd = dcol + (co * a.s_h + rh) * sw * ld;
        switch (sw) {
          case 2:
            interleave<kToImage, 2>(i, a.st[3], dd, ld, sw, r, a.W);
            break;
          case 4:
            interleave<kToImage, 4>(i, a.st[3], dd, ld, sw, r, a.W);
            break;
          case 8:
            interleave<kToImage, 8>(i, a.st[3], dd, ld, sw, r, a.W);
            break;
          default:
            interleave<kToImage, 0>(i, a.st[3], dd, ld, sw, r, a.W);
        }
      }
    }
  }
}
template <typename TI, typename TB>
FK_INLINE void blocks_to_image(TI* img, TB* d, int64_t ld, const MoveArgs& a) {
  move_leaf<true>(img, d, ld, a);
}
template <typename TI, typename TB>
FK_INLINE void image_to_blocks(TI* img, TB* d, int64_t ld, const MoveArgs& a) {
  move_leaf<false>(img, d, ld, a);
}
FK_MULTI_ISA(blocks_to_image)
FK_MULTI_ISA(image_to_blocks)

// Calls of the leaves above, on Bits when no conversion is needed.
template <typename T, typename TB>
void to_image(T* img, TB* d, int64_t ld, const MoveArgs& a) {
  if constexpr (std::is_same_v<T, TB>) {
    blocks_to_image_isa<Bits<T>, Bits<T>>(reinterpret_cast<Bits<T>*>(img),
                                          reinterpret_cast<Bits<T>*>(d), ld, a);
  } else {
    blocks_to_image_isa<T, TB>(img, d, ld, a);
  }
}
template <typename T, typename TB>
void to_blocks(const T* img, TB* d, int64_t ld, const MoveArgs& a) {  // img is only read
  if constexpr (std::is_same_v<T, TB>) {
    image_to_blocks_isa<Bits<T>, Bits<T>>(reinterpret_cast<Bits<T>*>(const_cast<T*>(img)),
                                          reinterpret_cast<Bits<T>*>(d), ld, a);
  } else {
    image_to_blocks_isa<T, TB>(const_cast<T*>(img), d, ld, a);
  }
}

// gx planes [p0, p1) of its (n, c) planes: gx[n, c, i_h, i_w] = sum over (m_h, m_w) of
// e[c / cin][(c % cin, m_h, m_w)][block (i_h + m_h, i_w + m_w)], in a fixed order,
// accumulated in acc (IH x Wa, Wa = max(IW, Wp)). Where Wa = Wp (E's row length) and an
// offset's blocks cover whole input rows, its terms are one contiguous loop over the
// plane (the columns past IW pick up neighbouring blocks and are dropped).
struct Col2imArgs {
  int64_t channels, IH, IW, cin, K, nblk, q0h, nqh, q0w, nqw, Wp, nmh, nmw;
  const int64_t *mh, *mw;
  int64_t st[4];
};
template <typename T, typename TB>
FK_INLINE void col2im_leaf(T* gx, const TB* e, at::opmath_type<T>* __restrict__ acc,
                           const Col2imArgs& a, int64_t p0, int64_t p1) {
  using acc_t = at::opmath_type<T>;
  const int64_t Wp = a.Wp, Wa = std::max(a.IW, Wp);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / a.channels, c = p % a.channels;
    for (int64_t i = 0; i < a.IH * Wa; ++i) acc[i] = acc_t(0);
    for (int64_t iy = 0; iy < a.nmh; ++iy) {
      const int64_t dy = a.mh[iy] - a.q0h;  // input row i_h is block row i_h + dy
      const int64_t h0 = std::clamp<int64_t>(-dy, 0, a.IH),
                    h1 = std::clamp<int64_t>(a.nqh - dy, h0, a.IH);
      for (int64_t ix = 0; ix < a.nmw; ++ix) {
        const int64_t dx = a.mw[ix] - a.q0w;  // input column i_w is block i_w + dx
        const int64_t lo = std::clamp<int64_t>(-dx, 0, a.IW),
                      hi = std::clamp<int64_t>(a.nqw - dx, lo, a.IW);
        const int64_t k = ((c % a.cin) * a.nmh + iy) * a.nmw + ix;
        const TB* __restrict__ src =
            e + ((c / a.cin) * a.K + k) * a.nblk + (n * a.nqh + dy) * Wp + dx;
        if (lo == 0 && hi == a.IW && Wa == Wp) {
          for (int64_t i = h0 * Wp; i < h1 * Wp; ++i) acc[i] += static_cast<acc_t>(src[i]);
        } else {
          for (int64_t ih = h0; ih < h1; ++ih) {
            for (int64_t iw = lo; iw < hi; ++iw)
              acc[ih * Wa + iw] += static_cast<acc_t>(src[ih * Wp + iw]);
          }
        }
      }
    }
    for (int64_t ih = 0; ih < a.IH; ++ih) {
      T* __restrict__ dst = gx + n * a.st[0] + c * a.st[1] + ih * a.st[2];
      const acc_t* arow = acc + ih * Wa;
      if (a.st[3] == 1) {
        for (int64_t iw = 0; iw < a.IW; ++iw) dst[iw] = static_cast<T>(arow[iw]);
      } else {
        for (int64_t iw = 0; iw < a.IW; ++iw) dst[iw * a.st[3]] = static_cast<T>(arow[iw]);
      }
    }
  }
}
FK_MULTI_ISA(col2im_leaf)

// acc[e] = (first ? 0 : acc[e]) + v[e] (bfloat16 / half partial sums, added in float).
template <typename T>
FK_INLINE void accumulate_leaf(at::opmath_type<T>* __restrict__ acc, const T* __restrict__ v,
                               int64_t n, bool first) {
  using acc_t = at::opmath_type<T>;
  if (first) {
    for (int64_t e = 0; e < n; ++e) acc[e] = static_cast<acc_t>(v[e]);
  } else {
    for (int64_t e = 0; e < n; ++e) acc[e] += static_cast<acc_t>(v[e]);
  }
}
FK_MULTI_ISA(accumulate_leaf)

}  // namespace deconv_cpu
}  // namespace fcn_kernels
