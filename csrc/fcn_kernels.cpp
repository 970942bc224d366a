// Operator schemas for every fcn_kernels op, and the Python module init.
// Kernels live in csrc/<op>/cpu*.cpp and csrc/<op>/cuda.cu (TORCH_LIBRARY_IMPL), autograd in
// csrc/autograd.cpp; fake kernels and the public Python API live in fcn_kernels/*.py.
#include <Python.h>
#include <torch/library.h>

// `import fcn_kernels._C` loads this shared library, which runs the registrations
// below. No Python functions are bound: everything goes through torch.ops.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "fcn_kernels operator library", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace {

// The seven schemas, defined for torch.ops.fcn_kernels (CPU, CUDA, autograd, autocast,
// fake kernels) and, identically, for torch.ops.fcn_kernels_emu: the GPU code run on
// the CPU by the emulated launcher (csrc/gpu/emu_launcher.h), a testing aid.
void define_schemas(torch::Library& m) {
  // --- bilinear upsampling (== F.interpolate(mode="bilinear")) -------------------
  // scale_h / scale_w: the user's scale factors when given (they change the source
  // index rule exactly as in ATen), None when the output size was given.
  m.def(
      "bilinear_upsample(Tensor self, SymInt[2] output_size, bool align_corners, "
      "float? scale_h, float? scale_w) -> Tensor");
  m.def(
      "bilinear_upsample_backward(Tensor grad_output, SymInt[4] input_size, "
      "bool align_corners, float? scale_h, float? scale_w) -> Tensor");

  // --- max unpooling (== F.max_unpool2d) -----------------------------------------
  // check_indices=False: the indices were validated by the forward (autograd's call),
  // so the CUDA backward may skip the host sync that raising an IndexError needs
  // (entries out of range then read as 0). CPU kernels always check.
  m.def(
      "max_unpool2d(Tensor self, Tensor indices, int[2] kernel_size, int[2] stride, "
      "int[2] padding, SymInt[2] output_size) -> Tensor");
  m.def(
      "max_unpool2d_backward(Tensor grad_output, Tensor indices, int[2] kernel_size, "
      "int[2] stride, int[2] padding, bool check_indices=True) -> Tensor");

  // --- fused transposed convolution + crop ---------------------------------------
  // == F.conv_transpose2d(...)[..., offset[0]:offset[0]+size[0],
  //                                 offset[1]:offset[1]+size[1]]
  m.def(
      "conv_transpose2d_crop(Tensor self, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] output_padding, int groups, int[2] dilation, "
      "int[2] offset, SymInt[2] size) -> Tensor");
  m.def(
      "conv_transpose2d_crop_backward_input(Tensor grad_output, Tensor weight, "
      "SymInt[4] input_size, int[2] stride, int[2] padding, int groups, "
      "int[2] dilation, int[2] offset) -> Tensor");
  m.def(
      "conv_transpose2d_crop_backward_weight(Tensor grad_output, Tensor self, "
      "SymInt[4] weight_size, int[2] stride, int[2] padding, int groups, "
      "int[2] dilation, int[2] offset) -> Tensor");
}

}  // namespace

TORCH_LIBRARY(fcn_kernels, m) {
  define_schemas(m);
}
TORCH_LIBRARY(fcn_kernels_emu, m) {
  define_schemas(m);
}
