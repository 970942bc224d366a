// Runtime switches between variants of conv_transpose2d_crop's GPU code, so that one
// process (benches/bench_deconv.py, the GPU check) times both on the same GPU and the
// first GPU run decides with data. Read from the environment at every call (a getenv,
// ~100 ns next to a launch's microseconds); unset or empty means the default:
// * FCN_KERNELS_DECONV_GRAD_INPUT=gather|tile: the input gradient of the gather path
//   by BackwardInputKernel (default) or by the shared-memory TileGradInputKernel
//   (deconv/gpu_tile.h; where its tile does not fit in shared memory the gather runs);
// * FCN_KERNELS_DECONV_LOWP=gather|cudnn: float16/bfloat16 forward and input gradient
//   by the gather kernels (default) or by ATen's convolution (cuDNN's tensor cores on a
//   GPU), as the dense path runs everything else.
// A value not listed raises a ValueError naming the variable, on every GPU deconv call.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace fcn_kernels {
namespace deconv_gpu {

// The variable's value as an index into `choices` (unset or empty: 0).
template <size_t N>
int env_choice(const char* name, const char* const (&choices)[N]) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  for (size_t i = 0; i < N; ++i) {
    if (std::strcmp(v, choices[i]) == 0) return static_cast<int>(i);
  }
  TORCH_CHECK_VALUE(false, "environment variable ", name, "=", v, " is not one of: ", choices[0],
                    ", ", choices[N - 1]);
  return 0;
}

struct Variants {
  bool grad_input_tile, lowp_cudnn;
};

inline Variants read_variants() {
  static constexpr const char* kGradInput[] = {"gather", "tile"};
  static constexpr const char* kLowp[] = {"gather", "cudnn"};
  return {env_choice("FCN_KERNELS_DECONV_GRAD_INPUT", kGradInput) == 1,
          env_choice("FCN_KERNELS_DECONV_LOWP", kLowp) == 1};
}

}  // namespace deconv_gpu
}  // namespace fcn_kernels
