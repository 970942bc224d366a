// Runtime instruction-set dispatch for the CPU kernels' hot loops.
//
// The extension is compiled for the baseline ISA (x86-64: SSE2) so it loads on any CPU,
// but ATen's CPU kernels are compiled for AVX2 and AVX-512 as well and pick one at run
// time; with baseline code our bfloat16/float16 loops in particular lose to them (the
// conversions do not vectorise in SSE2). So each hot loop is written once, as an
// FK_INLINE function template (a leaf: no calls that are not inlined), and
// FK_MULTI_ISA(name) defines name_isa<...>(args...), which runs it compiled for AVX-512,
// AVX2+FMA or the baseline (template parameters must be types: wrap values in
// std::integral_constant). The choice follows ATen's own (at::
// get_cpu_capability(): the CPU's features and the ATEN_CPU_CAPABILITY override), so a
// benchmark compares like with like and ATEN_CPU_CAPABILITY=default forces baseline
// code in both. Lambdas do not inherit a target attribute: keep the loops in the
// FK_INLINE functions, not in lambdas.
#pragma once

#include <ATen/Version.h>

#include <string>
#include <utility>

#define FK_INLINE inline __attribute__((always_inline))

namespace fcn_kernels {

enum class Isa { kBaseline, kAvx2, kAvx512 };

inline Isa cpu_isa() {
  static const Isa isa = [] {
#if defined(__x86_64__)
    const std::string cap = at::get_cpu_capability();  // "AVX512", "AVX2", "DEFAULT", ...
    if (cap == "AVX512") return Isa::kAvx512;
    if (cap == "AVX2") return Isa::kAvx2;
#endif
    return Isa::kBaseline;
  }();
  return isa;
}

}  // namespace fcn_kernels

#if defined(__x86_64__) && defined(__GNUC__)
#define FK_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt")))
#define FK_TARGET_AVX512                                                         \
  __attribute__((                                                                \
      target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt," \
             "prefer-vector-width=512")))
// NAME_isa<T...>(args...) == NAME<T...>(args...), compiled for the CPU's best ISA.
#define FK_MULTI_ISA(NAME)                                  \
  template <typename... Ts, typename... A>                  \
  FK_TARGET_AVX512 auto NAME##_avx512(A&&... a) {           \
    return NAME<Ts...>(std::forward<A>(a)...);              \
  }                                                         \
  template <typename... Ts, typename... A>                  \
  FK_TARGET_AVX2 auto NAME##_avx2(A&&... a) {               \
    return NAME<Ts...>(std::forward<A>(a)...);              \
  }                                                         \
  template <typename... Ts, typename... A>                  \
  auto NAME##_isa(A&&... a) {                               \
    switch (::fcn_kernels::cpu_isa()) {                     \
      case ::fcn_kernels::Isa::kAvx512:                     \
        return NAME##_avx512<Ts...>(std::forward<A>(a)...); \
      case ::fcn_kernels::Isa::kAvx2:                       \
        return NAME##_avx2<Ts...>(std::forward<A>(a)...);   \
      default:                                              \
        return NAME<Ts...>(std::forward<A>(a)...);          \
    }                                                       \
  }
#else
#define FK_MULTI_ISA(NAME)                     \
  template <typename... Ts, typename... A>     \
  auto NAME##_isa(A&&... a) {                  \
    return NAME<Ts...>(std::forward<A>(a)...); \
  }
#endif
