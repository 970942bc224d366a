// AVX-512 float GEMM micro-kernels for the phase decomposition (cpu_phase.cpp).
//
// Where ATen's CPU capability is AVX-512, the phase GEMMs run these register-tile
// kernels in float (bfloat16 / half data converted on the way in and rounded once on
// the way out) instead of ATen's mm: BLAS libraries may run narrower kernels on some
// CPUs, and a library call has a fixed cost comparable to the whole GEMM of FCN's small
// layers (benches/RESULTS.md). Every element is one fixed sequence of FMAs: the bits do
// not depend on how rows or columns are split.
#pragma once

#include <algorithm>
#include <cstdint>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace fcn_kernels {
namespace deconv_cpu {

constexpr int64_t kMr = 12, kNr = 32;  // sgemm_avx512's register tile: 12 x 2 zmm

#if defined(__x86_64__) && defined(__GNUC__)
#define FK_AVX512_GEMM 1
// C (m x n, ldc) = A (m x k, packed: see phase_weight in cpu_phase.cpp) x B (k x n, row-major,
// ldb).
__attribute__((target("avx512f,avx512vl,fma"))) inline void sgemm_avx512(int64_t m, int64_t n,
                                                                         int64_t k, const float* ap,
                                                                         const float* b,
                                                                         int64_t ldb, float* c,
                                                                         int64_t ldc) {
  for (int64_t j = 0; j < n; j += kNr) {  // a 32-column slice of B stays in L1
    const int64_t nb = std::min(kNr, n - j);
    const __mmask16 m0 = nb >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nb) - 1);
    const __mmask16 m1 = nb >= 32   ? 0xFFFF
                         : nb <= 16 ? 0
                                    : static_cast<__mmask16>((1u << (nb - 16)) - 1);
    for (int64_t i = 0; i < m; i += kMr) {
      const float* a = ap + i * k;
      const float* bp = b + j;
      __m512 acc[kMr][2];
#pragma GCC unroll 12
      for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int64_t kk = 0; kk < k; ++kk, a += kMr, bp += ldb) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, bp), b1 = _mm512_maskz_loadu_ps(m1, bp + 16);
#pragma GCC unroll 12
        for (int r = 0; r < kMr; ++r) {
          const __m512 av = _mm512_set1_ps(a[r]);
          acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
        }
      }
#pragma GCC unroll 12
      for (int r = 0; r < kMr; ++r) {  // constant indices: acc stays in registers
        if (i + r >= m) break;
        float* cp = c + (i + r) * ldc + j;
        _mm512_mask_storeu_ps(cp, m0, acc[r][0]);
        _mm512_mask_storeu_ps(cp + 16, m1, acc[r][1]);
      }
    }
  }
}

// The sum of the 16 lanes, a fixed tree. (Masked forms: GCC 12's unmasked ones warn.)
__attribute__((target("avx512f,avx512vl,fma"))) inline float hsum(__m512 v) {
  constexpr __mmask16 all = 0xFFFF;
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, all, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, all, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, all, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, all, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

// C (m x n, ldc) += A (m x k, lda) x B^T (B: n x k, ldb), rows contiguous along k: the
// weight gradient's sum over blocks. Register tile of 6 x 4 dot products, each a fixed
// sequence of 16-lane FMAs, then hsum.
__attribute__((target("avx512f,avx512vl,fma"))) inline void sgemm_nt_avx512(
    int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
    float* c, int64_t ldc) {
  constexpr int kTi = 6, kTj = 4;
  const int64_t kv = k / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (k - kv)) - 1);
  for (int64_t i = 0; i < m; i += kTi) {
    const float* ar[kTi];
#pragma GCC unroll 6
    for (int r = 0; r < kTi; ++r)
      ar[r] = a + std::min(i + r, m - 1) * lda;  // edge: repeated, not stored
    for (int64_t j = 0; j < n; j += kTj) {
      const float* br[kTj];
#pragma GCC unroll 4
      for (int q = 0; q < kTj; ++q) br[q] = b + std::min(j + q, n - 1) * ldb;
      __m512 acc[kTi][kTj];
#pragma GCC unroll 6
      for (int r = 0; r < kTi; ++r) {
#pragma GCC unroll 4
        for (int q = 0; q < kTj; ++q) acc[r][q] = _mm512_setzero_ps();
      }
      for (int64_t kk = 0; kk < k; kk += 16) {
        const __mmask16 mk = kk < kv ? static_cast<__mmask16>(0xFFFF) : tail;
        __m512 bv[kTj];
#pragma GCC unroll 4
        for (int q = 0; q < kTj; ++q) bv[q] = _mm512_maskz_loadu_ps(mk, br[q] + kk);
#pragma GCC unroll 6
        for (int r = 0; r < kTi; ++r) {
          const __m512 av = _mm512_maskz_loadu_ps(mk, ar[r] + kk);
#pragma GCC unroll 4
          for (int q = 0; q < kTj; ++q) acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);
        }
      }
#pragma GCC unroll 6
      for (int r = 0; r < kTi; ++r) {
#pragma GCC unroll 4
        for (int q = 0; q < kTj; ++q) {
          if (i + r < m && j + q < n) c[(i + r) * ldc + j + q] += hsum(acc[r][q]);
        }
      }
    }
  }
}
#endif

}  // namespace deconv_cpu
}  // namespace fcn_kernels
