// conv_transpose2d_crop's GPU code (deconv/gpu.h) instantiated for the CPU emulation of
// the launcher: torch.ops.fcn_kernels_emu.conv_transpose2d_crop* on CPU tensors
// (fcn_kernels.testing.emulated_cuda()).
#include <torch/library.h>

#include "gpu/emu_launcher.h"
#include "deconv/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels_emu, CPU, m) {
  using deconv_gpu::conv_transpose2d_crop_backward_input_gpu;
  using deconv_gpu::conv_transpose2d_crop_backward_weight_gpu;
  using deconv_gpu::conv_transpose2d_crop_gpu;
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_gpu<EmuLauncher>);
  m.impl("conv_transpose2d_crop_backward_input",
         &conv_transpose2d_crop_backward_input_gpu<EmuLauncher>);
  m.impl("conv_transpose2d_crop_backward_weight",
         &conv_transpose2d_crop_backward_weight_gpu<EmuLauncher>);
}

}  // namespace fcn_kernels
