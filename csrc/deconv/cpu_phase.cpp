// Transposed convolution on CPU with any weight: a sub-pixel (phase) decomposition
// into plain GEMMs (cpu_gemm.h's AVX-512 kernels, else ATen's mm) over the blocks under
// the crop window only. The data movement around the GEMMs is in cpu_move.h.
//
// Along an axis, input i reaches full-map position Z - p = i*s + k*d - p through tap k.
// Writing k*d = r + s*m (0 <= r < s), position Z = q*s + r (block q, phase r) receives
// x[q - m] through each tap of phase r. So every block of s_h x s_w outputs is the same
// dense linear map of the inputs x[:, q_h - m_h, q_w - m_w] over the few distinct
// offsets m (2 x 2 for FCN's k = 2s):
//   D[(co, r_h, r_w)][block] = sum over (ci, m_h, m_w) of B[(co, r_h, r_w)][(ci, m_h, m_w)]
//                                                      * col[(ci, m_h, m_w)][block],
// one GEMM per chunk of block rows (cpu_gemm.h's AVX-512 kernels, else ATen's mm), then D is
// copied into the crop. No multiplies by the zeros a strided transposed convolution
// inserts, no scatter-add, only the blocks under the crop window. The two gradients are
// the other two products of the same matrices. Chunks have sizes derived from the
// shapes alone and every sum a fixed order: the same bits on every run and for any
// thread count. Every layout, dilation, group count and crop takes this path.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/isa.h"
#include "common/parallel.h"
#include "deconv/cpu.h"
#include "deconv/cpu_gemm.h"
#include "deconv/cpu_move.h"

namespace fcn_kernels {
namespace deconv_cpu {

namespace {

PhaseAxis phase_axis(int64_t K, int64_t s, int64_t p, int64_t d, int64_t off, int64_t out) {
  PhaseAxis a;
  a.s = s;
  a.pre = off + p;
  a.q0 = a.pre / s;
  a.nq = (a.pre + out - 1) / s - a.q0 + 1;
  for (int64_t k = 0; k < K; ++k) a.m.push_back(k * d / s);
  a.m.erase(std::unique(a.m.begin(), a.m.end()), a.m.end());  // ascending already
  a.dm = a.m.back() - a.m.front();
  for (int64_t k = 0; k < K; ++k) {
    a.r.push_back(k * d % s);
    a.mi.push_back(std::lower_bound(a.m.begin(), a.m.end(), k * d / s) - a.m.begin());
  }
  return a;
}

}  // namespace

PhaseGeom phase_geom(int64_t N, int64_t Cin, at::IntArrayRef w, int64_t groups,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     at::IntArrayRef offset, int64_t OH, int64_t OW, int64_t elem_size) {
  PhaseGeom geom;
  geom.h = phase_axis(w[2], stride[0], padding[0], dilation[0], offset[0], OH);
  geom.w = phase_axis(w[3], stride[1], padding[1], dilation[1], offset[1], OW);
  geom.G = groups;
  geom.cin = Cin / groups;
  geom.cout = w[1];
  geom.K = geom.cin * static_cast<int64_t>(geom.h.m.size() * geom.w.m.size());
  geom.M = geom.cout * geom.h.s * geom.w.s;
  geom.Hp = geom.h.nq + geom.h.dm;
  geom.Wp = geom.w.nq + geom.w.dm;
  geom.rows = N * geom.h.nq;
  // Chunks of about 2 MiB of col + D: large GEMMs (a library GEMM call has a fixed
  // cost, benches/RESULTS.md); at least two where there are rows enough so that small layers use
  // two threads, and a multiple of 4 beyond that for an even split. From the shapes only, never the
  // thread count, so the results do not depend on it.
  const int64_t total = geom.rows * geom.Wp * (geom.K + 1 + geom.M) * elem_size;
  int64_t n = std::max<int64_t>(2, (total + (int64_t{2} << 20) - 1) / (int64_t{2} << 20));
  if (n > 2) n = (n + 3) / 4 * 4;
  n = std::min(n, geom.rows);
  geom.rc = (geom.rows + n - 1) / n;
  geom.chunks = (geom.rows + geom.rc - 1) / geom.rc;
  return geom;
}

namespace {

// f(gi, m, k, e) for every weight element e = ((c * cout + co) * KH + ky) * KW + kx, in
// order: its group gi = c / cin, B row m = (co, r_h, r_w) and column k = (c % cin, i_h, i_w).
template <typename F>
void for_each_tap(const PhaseGeom& geom, int64_t KH, int64_t KW, const F& f) {
  const int64_t nmh = geom.h.m.size(), nmw = geom.w.m.size(), sh = geom.h.s, sw = geom.w.s;
  const int64_t *rh = geom.h.r.data(), *mih = geom.h.mi.data(), *rw = geom.w.r.data(),
                *miw = geom.w.mi.data();
  int64_t e = 0;
  for (int64_t c = 0; c < geom.G * geom.cin; ++c) {
    const int64_t gi = c / geom.cin, ci = c % geom.cin;
    for (int64_t co = 0; co < geom.cout; ++co) {
      for (int64_t ky = 0; ky < KH; ++ky) {
        const int64_t m0 = (co * sh + rh[ky]) * sw, k0 = (ci * nmh + mih[ky]) * nmw;
        for (int64_t kx = 0; kx < KW; ++kx) f(gi, m0 + rw[kx], k0 + miw[kx], e++);
      }
    }
  }
}

// B (M x K1 per group, K1 = K [+ 1]): row (co, r_h, r_w), column (ci, i_h, i_w); zero
// where a phase has no tap at an offset. With a bias, an extra column holds it (col's
// matching row is all ones), so the GEMM adds it before its single rounding. Stored as
// kRows: (G, M, K1) in the weight's type for ATen's mm; kPacked / kPackedT: B / B^T as
// sgemm_avx512's A, in float: strips of kMr rows, k-major, rows past the end zero.
enum class BLayout { kRows, kPacked, kPackedT };

at::Tensor phase_weight(const at::Tensor& weight, const at::Tensor& bias, const PhaseGeom& geom,
                        BLayout layout) {
  const int64_t K1 = geom.K + (bias.defined() ? 1 : 0);
  const bool tr = layout == BLayout::kPackedT, packed = layout != BLayout::kRows;
  const int64_t rows = tr ? K1 : geom.M, cols = tr ? geom.M : K1;  // of the stored matrix
  const int64_t per = (packed ? (rows + kMr - 1) / kMr * kMr : rows) * cols;
  at::Tensor b =
      at::zeros({geom.G, per}, weight.options().dtype(packed ? at::kFloat : weight.scalar_type()));
  // B[m][k] of group gi sits at gi * per + moff[m] + koff[k].
  std::vector<int64_t> moff(geom.M), koff(K1);
  for (int64_t i = 0; i < rows; ++i) {
    (tr ? koff : moff)[i] = packed ? (i / kMr) * cols * kMr + i % kMr : i * cols;
  }
  for (int64_t j = 0; j < cols; ++j) (tr ? moff : koff)[j] = packed ? j * kMr : j;
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, w.scalar_type(), "deconv_phase_weight", [&] {
        const scalar_t* wp = w.const_data_ptr<scalar_t>();
        const int64_t *mo = moff.data(), *ko = koff.data();
        const auto fill = [&](auto* dst) {
          using out_t = std::remove_pointer_t<decltype(dst)>;
          for_each_tap(geom, w.size(2), w.size(3),
                       [=](int64_t gi, int64_t m, int64_t k, int64_t e) {
                         dst[gi * per + mo[m] + ko[k]] = static_cast<out_t>(wp[e]);
                       });
          if (bias.defined()) {
            const scalar_t* bp = bias.const_data_ptr<scalar_t>();
            for (int64_t gi = 0; gi < geom.G; ++gi) {
              for (int64_t m = 0; m < geom.M; ++m) {
                dst[gi * per + moff[m] + koff[geom.K]] =
                    static_cast<out_t>(bp[gi * geom.cout + m / (geom.h.s * geom.w.s)]);
              }
            }
          }
        };
        if (packed) {
          fill(b.mutable_data_ptr<float>());
        } else {
          fill(b.mutable_data_ptr<scalar_t>());
        }
      });
  return b;
}

}  // namespace

bool avx512_gemm() {
#ifdef FK_AVX512_GEMM
  return cpu_isa() == Isa::kAvx512;
#else
  return false;
#endif
}

namespace {

// x (any strides) as padded planes of gemm_t, plus a zero tail for the copies of the last
// plane that run dm_w past its end (into unused blocks).
template <typename T, typename gemm_t>
at::Tensor phase_pad(const at::Tensor& x, const PhaseGeom& geom) {
  const int64_t P = x.size(0) * x.size(1), plane = geom.Hp * geom.Wp;
  at::Tensor xp = at::empty({P * plane + geom.w.dm},
                            x.options().dtype(c10::CppTypeToScalarType<gemm_t>::value));
  gemm_t* dst = xp.mutable_data_ptr<gemm_t>();
  std::fill(dst + P * plane, dst + P * plane + geom.w.dm, gemm_t(0));
  const MoveArgs a = move_args(geom, 0, 0, x.size(1), x.size(2), x.size(3), x.strides());
  const T* src = x.const_data_ptr<T>();
  const int64_t u0 = geom.h.q0 - geom.h.m.back(), v0 = geom.w.q0 - geom.w.m.back();
  at::parallel_for(0, P, grain(plane), [&](int64_t p0, int64_t p1) {
    if constexpr (std::is_same_v<T, gemm_t>) {
      pad_leaf_isa<Bits<T>, Bits<T>>(reinterpret_cast<Bits<T>*>(dst),
                                     reinterpret_cast<const Bits<T>*>(src), a, geom.Hp, u0, v0, p0,
                                     p1);
    } else {
      pad_leaf_isa<T, gemm_t>(dst, src, a, geom.Hp, u0, v0, p0, p1);
    }
  });
  return xp;
}

// col[(ci, i_h, i_w)][(row - r0) * Wp + j] for block rows [r0, r1) of group gi: each
// row of col is a copy of a padded plane from (u, v) = (m_h.back() - m_h, m_w.back() - m_w)
// on. zero_unused clears the unused blocks (the weight gradient sums over all blocks).
template <typename gemm_t>
void phase_im2col(gemm_t* col, int64_t ld, const gemm_t* xp, const PhaseGeom& geom, int64_t Cin,
                  int64_t gi, int64_t r0, int64_t r1, bool zero_unused) {
  const int64_t nmh = geom.h.m.size(), nmw = geom.w.m.size(), Wp = geom.Wp, plane = geom.Hp * Wp;
  for (int64_t ci = 0; ci < geom.cin; ++ci) {
    for (int64_t iy = 0; iy < nmh; ++iy) {
      for (int64_t ix = 0; ix < nmw; ++ix) {
        gemm_t* dst = col + ((ci * nmh + iy) * nmw + ix) * ld;
        const int64_t shift =
            (geom.h.m.back() - geom.h.m[iy]) * Wp + geom.w.m.back() - geom.w.m[ix];
        for (int64_t row = r0; row < r1;) {  // one copy per image
          const int64_t n = row / geom.h.nq, t = row % geom.h.nq,
                        cnt = std::min(r1 - row, geom.h.nq - t);
          const gemm_t* src = xp + (n * Cin + gi * geom.cin + ci) * plane + t * Wp + shift;
          std::copy(src, src + cnt * Wp, dst + (row - r0) * Wp);
          row += cnt;
        }
        if (zero_unused && Wp > geom.w.nq) {
          for (int64_t row = r0; row < r1; ++row) {
            std::fill(dst + (row - r0) * Wp + geom.w.nq, dst + (row - r0 + 1) * Wp, gemm_t(0));
          }
        }
      }
    }
  }
}

// Chunk c of the block rows: rows [r0, r1) and their nq = (r1 - r0) * Wp blocks.
struct ChunkRows {
  int64_t r0, r1, nq;
};

inline ChunkRows chunk_rows(const PhaseGeom& geom, int64_t c) {
  const int64_t r0 = c * geom.rc, r1 = std::min(geom.rows, r0 + geom.rc);
  return {r0, r1, (r1 - r0) * geom.Wp};
}

inline int64_t aligned(int64_t n) {
  return (n + 63) / 64 * 64;
}  // buffer offsets: 64 elements

template <typename gemm_t>
at::Tensor buffer(int64_t n, const at::Tensor& like) {
  return at::empty({n}, like.options().dtype(c10::CppTypeToScalarType<gemm_t>::value));
}

}  // namespace

// ---- the three products (declared in cpu.h) ----------------------------------------

// Forward: y (N, G * cout, OH, OW), any strides, from x through B.
template <typename T, typename gemm_t>
void phase_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                   at::Tensor& y, const PhaseGeom& geom) {
  const bool fast = std::is_same_v<gemm_t, float> && avx512_gemm();
  const at::Tensor bt = phase_weight(weight, bias, geom, fast ? BLayout::kPacked : BLayout::kRows);
  const at::Tensor xp = phase_pad<T, gemm_t>(x, geom);
  const int64_t K1 = geom.K + (bias.defined() ? 1 : 0), ld = geom.rc * geom.Wp, Cin = x.size(1);
  T* yp = y.mutable_data_ptr<T>();
  at::parallel_for(0, geom.chunks, 1, [&](int64_t c0, int64_t c1) {
    at::Tensor buf = buffer<gemm_t>(aligned(K1 * ld) + geom.M * ld, x);
    at::Tensor col = buf.narrow(0, 0, K1 * ld).view({K1, ld});
    at::Tensor d = buf.narrow(0, aligned(K1 * ld), geom.M * ld).view({geom.M, ld});
    if (K1 > geom.K) col[geom.K].fill_(1);  // the bias row
    for (int64_t c = c0; c < c1; ++c) {
      const auto [r0, r1, nq] = chunk_rows(geom, c);
      const MoveArgs ya = move_args(geom, r0, r1, geom.cout, y.size(2), y.size(3), y.strides());
      for (int64_t gi = 0; gi < geom.G; ++gi) {
        phase_im2col<gemm_t>(col.mutable_data_ptr<gemm_t>(), ld, xp.const_data_ptr<gemm_t>(), geom,
                             Cin, gi, r0, r1, false);
#ifdef FK_AVX512_GEMM
        if constexpr (std::is_same_v<gemm_t, float>) {
          if (fast) {
            sgemm_avx512(geom.M, nq, K1, bt[gi].const_data_ptr<float>(),
                         col.const_data_ptr<float>(), ld, d.mutable_data_ptr<float>(), ld);
          }
        }
#endif
        if (!fast) {
          at::Tensor dv = d.narrow(1, 0, nq);
          at::mm_out(dv, bt[gi].view({geom.M, K1}), col.narrow(1, 0, nq));
        }
        to_image<T, gemm_t>(yp + gi * geom.cout * y.stride(1), d.mutable_data_ptr<gemm_t>(), ld,
                            ya);
      }
    }
  });
}

// Backward-input: E = B^T x D(grad) ((G, K, blocks)), then col2im_leaf.
template <typename T, typename gemm_t>
void phase_backward_input(const at::Tensor& grad, const at::Tensor& weight, at::Tensor& gx,
                          const PhaseGeom& geom) {
  const bool fast = std::is_same_v<gemm_t, float> && avx512_gemm();
  const at::Tensor bt =
      phase_weight(weight, at::Tensor(), geom, fast ? BLayout::kPackedT : BLayout::kRows);
  const int64_t ld = geom.rc * geom.Wp, nblk = geom.rows * geom.Wp;
  // (+ Wp: col2im_leaf's whole-row loops read up to Wp past the last block; zeroed)
  at::Tensor e_buf = buffer<gemm_t>(geom.G * geom.K * nblk + geom.Wp, grad);
  e_buf.narrow(0, geom.G * geom.K * nblk, geom.Wp).zero_();
  at::Tensor e = e_buf.narrow(0, 0, geom.G * geom.K * nblk).view({geom.G, geom.K, nblk});
  const T* gp = grad.const_data_ptr<T>();
  at::parallel_for(0, geom.chunks, 1, [&](int64_t c0, int64_t c1) {
    at::Tensor gt = buffer<gemm_t>(geom.M * ld, grad).zero_().view({geom.M, ld});  // see move_leaf
    for (int64_t c = c0; c < c1; ++c) {
      const auto [r0, r1, nq] = chunk_rows(geom, c);
      const MoveArgs ga =
          move_args(geom, r0, r1, geom.cout, grad.size(2), grad.size(3), grad.strides());
      for (int64_t gi = 0; gi < geom.G; ++gi) {
        to_blocks<T, gemm_t>(gp + gi * geom.cout * grad.stride(1), gt.mutable_data_ptr<gemm_t>(),
                             ld, ga);
#ifdef FK_AVX512_GEMM
        if constexpr (std::is_same_v<gemm_t, float>) {
          if (fast) {
            sgemm_avx512(geom.K, nq, geom.M, bt[gi].const_data_ptr<float>(),
                         gt.const_data_ptr<float>(), ld,
                         e.mutable_data_ptr<float>() + gi * geom.K * nblk + r0 * geom.Wp, nblk);
          }
        }
#endif
        if (!fast) {
          at::Tensor ev = e[gi].narrow(1, r0 * geom.Wp, nq);
          at::mm_out(ev, bt[gi].view({geom.M, geom.K}).t(), gt.narrow(1, 0, nq));
        }
      }
    }
  });
  const int64_t IW = gx.size(3);
  const Col2imArgs a{gx.size(1),
                     gx.size(2),
                     IW,
                     geom.cin,
                     geom.K,
                     nblk,
                     geom.h.q0,
                     geom.h.nq,
                     geom.w.q0,
                     geom.w.nq,
                     geom.Wp,
                     static_cast<int64_t>(geom.h.m.size()),
                     static_cast<int64_t>(geom.w.m.size()),
                     geom.h.m.data(),
                     geom.w.m.data(),
                     {gx.stride(0), gx.stride(1), gx.stride(2), gx.stride(3)}};
  T* xp = gx.mutable_data_ptr<T>();
  const gemm_t* ep = e.const_data_ptr<gemm_t>();
  const int64_t plane = a.IH * std::max(IW, geom.Wp);
  // A plane's work: each of its elements sums one term per offset pair (m_h, m_w).
  at::parallel_for(0, gx.size(0) * a.channels, grain(plane * a.nmh * a.nmw),
                   [&](int64_t p0, int64_t p1) {
                     std::vector<at::opmath_type<T>> acc(plane);
                     col2im_leaf_isa<T, gemm_t>(xp, ep, acc.data(), a, p0, p1);
                   });
}

// Backward-weight: B's gradient D(grad) x col^T summed over all blocks, in S slices of
// consecutive chunks (each accumulated in order, then the slices in order), mapped back
// to the (Cin, cout, KH, KW) weight layout.
template <typename T, typename gemm_t>
at::Tensor phase_backward_weight(const at::Tensor& grad, const at::Tensor& x,
                                 at::IntArrayRef weight_size, const PhaseGeom& geom) {
  using acc_t = at::opmath_type<T>;
  const bool fast = std::is_same_v<gemm_t, float> && avx512_gemm();
  const bool reduced =
      !fast && !std::is_same_v<gemm_t, acc_t>;  // ATen's GEMM into gemm_t, sum in float
  const int64_t ld = geom.rc * geom.Wp, per = geom.G * geom.M * geom.K, Cin = x.size(1);
  const int64_t S =
      std::clamp<int64_t>((int64_t{1} << 24) / per, 1, std::min<int64_t>(geom.chunks, 8));
  const at::Tensor xp = phase_pad<T, gemm_t>(x, geom);
  at::Tensor acc = buffer<acc_t>(S * per, x).view({S, geom.G, geom.M, geom.K});
  const T* gp = grad.const_data_ptr<T>();
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    const int64_t tmp_n = reduced ? geom.M * geom.K : 0;
    at::Tensor buf = buffer<gemm_t>(aligned(geom.K * ld) + aligned(geom.M * ld) + tmp_n, x);
    at::Tensor col = buf.narrow(0, 0, geom.K * ld).view({geom.K, ld});
    at::Tensor gt = buf.narrow(0, aligned(geom.K * ld), geom.M * ld)
                        .view({geom.M, ld})
                        .zero_();  // see move_leaf
    at::Tensor tmp = reduced ? buf.narrow(0, aligned(geom.K * ld) + aligned(geom.M * ld), tmp_n)
                                   .view({geom.M, geom.K})
                             : at::Tensor();
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t cb = s * geom.chunks / S, ce = (s + 1) * geom.chunks / S;
      for (int64_t c = cb; c < ce; ++c) {
        const auto [r0, r1, nq] = chunk_rows(geom, c);
        const MoveArgs ga =
            move_args(geom, r0, r1, geom.cout, grad.size(2), grad.size(3), grad.strides());
        for (int64_t gi = 0; gi < geom.G; ++gi) {
          phase_im2col<gemm_t>(col.mutable_data_ptr<gemm_t>(), ld, xp.const_data_ptr<gemm_t>(),
                               geom, Cin, gi, r0, r1, true);
          to_blocks<T, gemm_t>(gp + gi * geom.cout * grad.stride(1), gt.mutable_data_ptr<gemm_t>(),
                               ld, ga);
          at::Tensor a = acc[s][gi];
          acc_t* ap = a.mutable_data_ptr<acc_t>();
#ifdef FK_AVX512_GEMM
          if constexpr (std::is_same_v<gemm_t, float> && std::is_same_v<acc_t, float>) {
            if (fast) {
              if (c == cb) std::fill(ap, ap + geom.M * geom.K, 0.f);
              sgemm_nt_avx512(geom.M, geom.K, nq, gt.const_data_ptr<float>(), ld,
                              col.const_data_ptr<float>(), ld, ap, geom.K);
              continue;
            }
          }
#endif
          const at::Tensor cv = col.narrow(1, 0, nq).t(), gv = gt.narrow(1, 0, nq);
          if (reduced) {
            at::mm_out(tmp, gv, cv);
            accumulate_leaf_isa<gemm_t>(ap, tmp.const_data_ptr<gemm_t>(), geom.M * geom.K, c == cb);
          } else if (c == cb) {
            at::mm_out(a, gv, cv);
          } else {
            at::addmm_out(a, a, gv, cv);
          }
        }
      }
    }
  });
  acc_t* ap = acc.mutable_data_ptr<acc_t>();
  for (int64_t s = 1; s < S; ++s) {  // the slices, in order
    for (int64_t e = 0; e < per; ++e) ap[e] += ap[s * per + e];
  }
  at::Tensor gw = buffer<acc_t>(c10::multiply_integers(weight_size), x);
  acc_t* wp = gw.mutable_data_ptr<acc_t>();
  for_each_tap(geom, weight_size[2], weight_size[3],
               [&](int64_t gi, int64_t m, int64_t k, int64_t e) {
                 wp[e] = ap[(gi * geom.M + m) * geom.K + k];
               });
  return gw.view(weight_size).to(x.scalar_type());
}

// The (T, gemm_t) pairs with_compute_type (cpu.cpp) runs.
#define FK_PHASE_INSTANTIATE(T, GEMM_T)                                                            \
  template void phase_forward<T, GEMM_T>(const at::Tensor&, const at::Tensor&, const at::Tensor&,  \
                                         at::Tensor&, const PhaseGeom&);                           \
  template void phase_backward_input<T, GEMM_T>(const at::Tensor&, const at::Tensor&, at::Tensor&, \
                                                const PhaseGeom&);                                 \
  template at::Tensor phase_backward_weight<T, GEMM_T>(const at::Tensor&, const at::Tensor&,       \
                                                       at::IntArrayRef, const PhaseGeom&);
FK_PHASE_INSTANTIATE(double, double)
FK_PHASE_INSTANTIATE(float, float)
FK_PHASE_INSTANTIATE(c10::Half, c10::Half)
FK_PHASE_INSTANTIATE(c10::Half, float)
FK_PHASE_INSTANTIATE(c10::BFloat16, c10::BFloat16)
FK_PHASE_INSTANTIATE(c10::BFloat16, float)
#undef FK_PHASE_INSTANTIATE

}  // namespace deconv_cpu
}  // namespace fcn_kernels
