// bilinear_upsample's GPU code (bilinear/gpu.h) launched by the CUDA launcher.
#include <torch/library.h>

#include "gpu/cuda_launcher.cuh"
#include "bilinear/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  bilinear_gpu::register_ops<CudaLauncher>(m);
}

}  // namespace fcn_kernels
