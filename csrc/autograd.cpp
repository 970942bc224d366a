// Autograd for every fcn_kernels op, in C++ (as torchvision's csrc/ops/autograd):
// registered for the Autograd dispatch key, so a call costs a few microseconds of
// bookkeeping instead of a Python autograd.Function round trip, which costs more than
// the whole kernel on FCN's small layers (benches/RESULTS.md).
//
// Every op is linear in each tensor operand, and its partial derivatives are other ops
// of this library (or the op itself), which have autograd too: double backward works.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

namespace fcn_kernels {
namespace {

using c10::SymIntArrayRef;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptDouble = std::optional<double>;

// Dispatcher handles of the ops (same signatures as their schemas).
template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using BilinearSig = at::Tensor(const at::Tensor&, SymIntArrayRef, bool, OptDouble, OptDouble);
at::Tensor bilinear(const at::Tensor& x, SymIntArrayRef size, bool ac, OptDouble sh, OptDouble sw) {
  static const auto op = handle<BilinearSig>("fcn_kernels::bilinear_upsample");
  return op.call(x, size, ac, sh, sw);
}
at::Tensor bilinear_backward(const at::Tensor& g, SymIntArrayRef input_size, bool ac, OptDouble sh,
                             OptDouble sw) {
  static const auto op = handle<BilinearSig>("fcn_kernels::bilinear_upsample_backward");
  return op.call(g, input_size, ac, sh, sw);
}

using IntRef = at::IntArrayRef;
at::Tensor unpool(const at::Tensor& x, const at::Tensor& ind, IntRef k, IntRef s, IntRef p,
                  SymIntArrayRef size) {
  static const auto op = handle<at::Tensor(const at::Tensor&, const at::Tensor&, IntRef, IntRef,
                                           IntRef, SymIntArrayRef)>("fcn_kernels::max_unpool2d");
  return op.call(x, ind, k, s, p, size);
}
at::Tensor unpool_backward(const at::Tensor& g, const at::Tensor& ind, IntRef k, IntRef s, IntRef p,
                           bool check_indices) {
  static const auto op =
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, IntRef, IntRef, IntRef, bool)>(
          "fcn_kernels::max_unpool2d_backward");
  return op.call(g, ind, k, s, p, check_indices);
}

at::Tensor deconv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                  IntRef stride, IntRef padding, IntRef output_padding, int64_t groups,
                  IntRef dilation, IntRef offset, SymIntArrayRef size) {
  static const auto op =
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                        IntRef, IntRef, IntRef, int64_t, IntRef, IntRef, SymIntArrayRef)>(
          "fcn_kernels::conv_transpose2d_crop");
  return op.call(x, w, b, stride, padding, output_padding, groups, dilation, offset, size);
}
using DeconvBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, SymIntArrayRef, IntRef,
                                     IntRef, int64_t, IntRef, IntRef);
at::Tensor deconv_backward_input(const at::Tensor& g, const at::Tensor& w,
                                 SymIntArrayRef input_size, IntRef stride, IntRef padding,
                                 int64_t groups, IntRef dilation, IntRef offset) {
  static const auto op =
      handle<DeconvBackwardSig>("fcn_kernels::conv_transpose2d_crop_backward_input");
  return op.call(g, w, input_size, stride, padding, groups, dilation, offset);
}
at::Tensor deconv_backward_weight(const at::Tensor& g, const at::Tensor& x,
                                  SymIntArrayRef weight_size, IntRef stride, IntRef padding,
                                  int64_t groups, IntRef dilation, IntRef offset) {
  static const auto op =
      handle<DeconvBackwardSig>("fcn_kernels::conv_transpose2d_crop_backward_weight");
  return op.call(g, x, weight_size, stride, padding, groups, dilation, offset);
}

// saved_data round trips (IValue lists).
std::vector<c10::SymInt> sym_vec(const c10::IValue& v) {
  return v.toSymIntList().vec();
}
std::vector<int64_t> int_vec(const c10::IValue& v) {
  return v.toIntVector();
}
OptDouble opt_double(const c10::IValue& v) {
  return v.isNone() ? OptDouble() : OptDouble(v.toDouble());
}
at::Tensor undef() {
  return at::Tensor();
}

// --- bilinear ---------------------------------------------------------------------

struct BilinearBackward : torch::autograd::Function<BilinearBackward> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& g, SymIntArrayRef input_size,
                            bool ac, OptDouble sh, OptDouble sw) {
    ctx->saved_data["out"] = g.sym_sizes().slice(2).vec();
    ctx->saved_data["ac"] = ac;
    ctx->saved_data["sh"] = sh;
    ctx->saved_data["sw"] = sw;
    at::AutoDispatchBelowADInplaceOrView guard;
    return bilinear_backward(g, input_size, ac, sh, sw);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Linear in g, with the forward op as its adjoint.
    const auto& d = ctx->saved_data;
    return {bilinear(grads[0], sym_vec(d.at("out")), d.at("ac").toBool(), opt_double(d.at("sh")),
                     opt_double(d.at("sw"))),
            undef(), undef(), undef(), undef()};
  }
};

struct Bilinear : torch::autograd::Function<Bilinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, SymIntArrayRef size, bool ac,
                            OptDouble sh, OptDouble sw) {
    ctx->saved_data["in"] = x.sym_sizes().vec();
    ctx->saved_data["ac"] = ac;
    ctx->saved_data["sh"] = sh;
    ctx->saved_data["sw"] = sw;
    at::AutoDispatchBelowADInplaceOrView guard;
    return bilinear(x, size, ac, sh, sw);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& d = ctx->saved_data;
    return {bilinear_backward(grads[0], sym_vec(d.at("in")), d.at("ac").toBool(),
                              opt_double(d.at("sh")), opt_double(d.at("sw"))),
            undef(), undef(), undef(), undef()};
  }
};

// --- max unpooling ----------------------------------------------------------------

struct UnpoolBackward : torch::autograd::Function<UnpoolBackward> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& g, const at::Tensor& ind,
                            IntRef k, IntRef s, IntRef p, bool check_indices) {
    ctx->save_for_backward({ind});
    ctx->saved_data["out"] = g.sym_sizes().slice(2).vec();
    at::AutoDispatchBelowADInplaceOrView guard;
    return unpool_backward(g, ind, k, s, p, check_indices);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The backward op is the gather g -> g[indices]; its adjoint scatters into the
    // unpooled planes and sums where indices repeat (as ATen's double backward does;
    // without repeats it equals the forward op).
    const at::Tensor ind = ctx->get_saved_variables()[0];
    const auto out = sym_vec(ctx->saved_data.at("out"));
    const at::Tensor& v = grads[0];
    const c10::SymInt n = ind.sym_size(0), c = ind.sym_size(1);
    at::Tensor flat = at::zeros_symint({n, c, out[0] * out[1]}, v.options());
    flat = flat.scatter_add(2, ind.reshape_symint({n, c, -1}), v.reshape_symint({n, c, -1}));
    return {flat.view_symint({n, c, out[0], out[1]}), undef(), undef(), undef(), undef(), undef()};
  }
};

struct Unpool : torch::autograd::Function<Unpool> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& ind,
                            IntRef k, IntRef s, IntRef p, SymIntArrayRef size) {
    ctx->save_for_backward({ind});
    ctx->saved_data["k"] = k;
    ctx->saved_data["s"] = s;
    ctx->saved_data["p"] = p;
    at::AutoDispatchBelowADInplaceOrView guard;
    return unpool(x, ind, k, s, p, size);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor ind = ctx->get_saved_variables()[0];
    const auto& d = ctx->saved_data;
    // The forward checked the indices, and autograd refuses a saved tensor changed in
    // place since: the CUDA kernel may skip its host sync (check_indices=false).
    return {unpool_backward(grads[0], ind, int_vec(d.at("k")), int_vec(d.at("s")),
                            int_vec(d.at("p")), /*check_indices=*/false),
            undef(),
            undef(),
            undef(),
            undef(),
            undef()};
  }
};

// --- transposed convolution + crop ----------------------------------------------------

// The geometry every deconv op shares, saved as IValues.
void save_geometry(AutogradContext* ctx, IntRef stride, IntRef padding, int64_t groups,
                   IntRef dilation, IntRef offset) {
  auto& d = ctx->saved_data;
  d["stride"] = stride;
  d["padding"] = padding;
  d["groups"] = groups;
  d["dilation"] = dilation;
  d["offset"] = offset;
}
struct Geometry {
  std::vector<int64_t> stride, padding, dilation, offset;
  int64_t groups;
  explicit Geometry(AutogradContext* ctx)
      : stride(int_vec(ctx->saved_data.at("stride"))),
        padding(int_vec(ctx->saved_data.at("padding"))),
        dilation(int_vec(ctx->saved_data.at("dilation"))),
        offset(int_vec(ctx->saved_data.at("offset"))),
        groups(ctx->saved_data.at("groups").toInt()) {}
  // The forward op producing a crop of `size` (the crop is known valid: output_padding
  // only enters the op's range check, so the largest allowed value is passed).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& w, SymIntArrayRef size) const {
    const std::vector<int64_t> big = {std::max(stride[0], dilation[0]) - 1,
                                      std::max(stride[1], dilation[1]) - 1};
    return deconv(x, w, std::nullopt, stride, padding, big, groups, dilation, offset, size);
  }
  at::Tensor input_grad(const at::Tensor& g, const at::Tensor& w, SymIntArrayRef input_size) const {
    return deconv_backward_input(g, w, input_size, stride, padding, groups, dilation, offset);
  }
  at::Tensor weight_grad(const at::Tensor& g, const at::Tensor& x,
                         SymIntArrayRef weight_size) const {
    return deconv_backward_weight(g, x, weight_size, stride, padding, groups, dilation, offset);
  }
};

struct DeconvBackwardInput : torch::autograd::Function<DeconvBackwardInput> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& g, const at::Tensor& w,
                            SymIntArrayRef input_size, IntRef stride, IntRef padding,
                            int64_t groups, IntRef dilation, IntRef offset) {
    save_geometry(ctx, stride, padding, groups, dilation, offset);
    ctx->saved_data["g_size"] = g.sym_sizes().slice(2).vec();
    ctx->saved_data["w_size"] = w.sym_sizes().vec();
    ctx->save_for_backward({w.requires_grad() ? g : at::Tensor(), w});
    at::AutoDispatchBelowADInplaceOrView guard;
    return deconv_backward_input(g, w, input_size, stride, padding, groups, dilation, offset);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Geometry geo(ctx);
    at::Tensor gg, gw;
    if (ctx->needs_input_grad(0)) {
      gg = geo.forward(grads[0], saved[1], sym_vec(ctx->saved_data.at("g_size")));
    }
    if (ctx->needs_input_grad(1)) {
      gw = geo.weight_grad(saved[0], grads[0], sym_vec(ctx->saved_data.at("w_size")));
    }
    return {gg, gw, undef(), undef(), undef(), undef(), undef(), undef()};
  }
};

struct DeconvBackwardWeight : torch::autograd::Function<DeconvBackwardWeight> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& g, const at::Tensor& x,
                            SymIntArrayRef weight_size, IntRef stride, IntRef padding,
                            int64_t groups, IntRef dilation, IntRef offset) {
    save_geometry(ctx, stride, padding, groups, dilation, offset);
    ctx->saved_data["g_size"] = g.sym_sizes().slice(2).vec();
    ctx->saved_data["x_size"] = x.sym_sizes().vec();
    ctx->save_for_backward(
        {x.requires_grad() ? g : at::Tensor(), g.requires_grad() ? x : at::Tensor()});
    at::AutoDispatchBelowADInplaceOrView guard;
    return deconv_backward_weight(g, x, weight_size, stride, padding, groups, dilation, offset);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Geometry geo(ctx);
    at::Tensor gg, gx;
    if (ctx->needs_input_grad(0)) {
      gg = geo.forward(saved[1], grads[0], sym_vec(ctx->saved_data.at("g_size")));
    }
    if (ctx->needs_input_grad(1)) {
      gx = geo.input_grad(saved[0], grads[0], sym_vec(ctx->saved_data.at("x_size")));
    }
    return {gg, gx, undef(), undef(), undef(), undef(), undef(), undef()};
  }
};

struct Deconv : torch::autograd::Function<Deconv> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& bias, IntRef stride, IntRef padding,
                            IntRef output_padding, int64_t groups, IntRef dilation, IntRef offset,
                            SymIntArrayRef size) {
    save_geometry(ctx, stride, padding, groups, dilation, offset);
    ctx->saved_data["x_size"] = x.sym_sizes().vec();
    ctx->saved_data["w_size"] = w.sym_sizes().vec();
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->saved_data["has_bias"] = has_bias;
    // x is only needed for the weight gradient: a frozen weight keeps nothing alive.
    ctx->save_for_backward({w.requires_grad() ? x : at::Tensor(), w});
    at::AutoDispatchBelowADInplaceOrView guard;
    return deconv(x, w, bias, stride, padding, output_padding, groups, dilation, offset, size);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Geometry geo(ctx);
    const at::Tensor& g = grads[0];
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0))
      gx = geo.input_grad(g, saved[1], sym_vec(ctx->saved_data.at("x_size")));
    if (ctx->needs_input_grad(1))
      gw = geo.weight_grad(g, saved[0], sym_vec(ctx->saved_data.at("w_size")));
    // Edges exist only for defined tensors: the bias is edge 2 when given.
    if (ctx->saved_data.at("has_bias").toBool() && ctx->needs_input_grad(2)) {
      gb = g.sum({0, 2, 3});
    }
    return {gx, gw, gb, undef(), undef(), undef(), undef(), undef(), undef(), undef()};
  }
};

// --- registration -------------------------------------------------------------------

at::Tensor bilinear_autograd(const at::Tensor& x, SymIntArrayRef size, bool ac, OptDouble sh,
                             OptDouble sw) {
  return Bilinear::apply(x, size, ac, sh, sw);
}
at::Tensor bilinear_backward_autograd(const at::Tensor& g, SymIntArrayRef input_size, bool ac,
                                      OptDouble sh, OptDouble sw) {
  return BilinearBackward::apply(g, input_size, ac, sh, sw);
}
at::Tensor unpool_autograd(const at::Tensor& x, const at::Tensor& ind, IntRef k, IntRef s, IntRef p,
                           SymIntArrayRef size) {
  return Unpool::apply(x, ind, k, s, p, size);
}
at::Tensor unpool_backward_autograd(const at::Tensor& g, const at::Tensor& ind, IntRef k, IntRef s,
                                    IntRef p, bool check_indices) {
  return UnpoolBackward::apply(g, ind, k, s, p, check_indices);
}
at::Tensor deconv_autograd(const at::Tensor& x, const at::Tensor& w,
                           const std::optional<at::Tensor>& b, IntRef stride, IntRef padding,
                           IntRef output_padding, int64_t groups, IntRef dilation, IntRef offset,
                           SymIntArrayRef size) {
  return Deconv::apply(x, w, b, stride, padding, output_padding, groups, dilation, offset, size);
}
at::Tensor deconv_backward_input_autograd(const at::Tensor& g, const at::Tensor& w,
                                          SymIntArrayRef input_size, IntRef stride, IntRef padding,
                                          int64_t groups, IntRef dilation, IntRef offset) {
  return DeconvBackwardInput::apply(g, w, input_size, stride, padding, groups, dilation, offset);
}
at::Tensor deconv_backward_weight_autograd(const at::Tensor& g, const at::Tensor& x,
                                           SymIntArrayRef weight_size, IntRef stride,
                                           IntRef padding, int64_t groups, IntRef dilation,
                                           IntRef offset) {
  return DeconvBackwardWeight::apply(g, x, weight_size, stride, padding, groups, dilation, offset);
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, Autograd, m) {
  m.impl("bilinear_upsample", TORCH_FN(bilinear_autograd));
  m.impl("bilinear_upsample_backward", TORCH_FN(bilinear_backward_autograd));
  m.impl("max_unpool2d", TORCH_FN(unpool_autograd));
  m.impl("max_unpool2d_backward", TORCH_FN(unpool_backward_autograd));
  m.impl("conv_transpose2d_crop", TORCH_FN(deconv_autograd));
  m.impl("conv_transpose2d_crop_backward_input", TORCH_FN(deconv_backward_input_autograd));
  m.impl("conv_transpose2d_crop_backward_weight", TORCH_FN(deconv_backward_weight_autograd));
}

}  // namespace fcn_kernels
