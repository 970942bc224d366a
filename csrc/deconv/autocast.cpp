// Autocast for conv_transpose2d_crop (as torchvision registers autocast for its ops):
// like ATen's conv_transpose2d, a lower-precision op, so under torch.autocast every
// floating operand is cast to the autocast dtype of its device type, then the op runs
// below the Autocast key. A direct torch.ops.fcn_kernels call and the Python wrapper
// therefore behave the same. The backward ops are only reached through autograd (whose
// operands are already cast) and the other two operators run in their input's dtype,
// as ATen's upsample_bilinear2d and max_unpool2d do.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace fcn_kernels {
namespace {

template <c10::DeviceType device_type>
at::Tensor conv_transpose2d_crop_autocast(const at::Tensor& self, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias,
                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                          at::IntArrayRef output_padding, int64_t groups,
                                          at::IntArrayRef dilation, at::IntArrayRef offset,
                                          c10::SymIntArrayRef size) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device_type);
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fcn_kernels::conv_transpose2d_crop", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                            at::IntArrayRef, at::IntArrayRef, c10::SymIntArrayRef)>();
  return op.call(at::autocast::cached_cast(dtype, self, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding,
                 output_padding, groups, dilation, offset, size);
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, AutocastCPU, m) {
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(fcn_kernels, AutocastCUDA, m) {
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_autocast<c10::DeviceType::CUDA>);
}

}  // namespace fcn_kernels
