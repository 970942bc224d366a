// Bilinear upsampling's CUDA code run on the CPU (torch.ops.fcn_kernels_emu): the same
// bilinear/gpu.h, launched by EmuLauncher.
#include <torch/library.h>

#include "gpu/emu_launcher.h"
#include "bilinear/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels_emu, CPU, m) {
  m.impl("bilinear_upsample", &bilinear_gpu::forward<EmuLauncher>);
  m.impl("bilinear_upsample_backward", &bilinear_gpu::backward<EmuLauncher>);
}

}  // namespace fcn_kernels
