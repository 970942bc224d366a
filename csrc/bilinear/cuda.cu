// Bilinear upsampling on CUDA: bilinear/gpu.h launched by CudaLauncher.
#include <torch/library.h>

#include "gpu/cuda_launcher.cuh"
#include "bilinear/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  m.impl("bilinear_upsample", &bilinear_gpu::forward<CudaLauncher>);
  m.impl("bilinear_upsample_backward", &bilinear_gpu::backward<CudaLauncher>);
}

}  // namespace fcn_kernels
