// fused_mix: one operator call forward and one backward for the whole MS-Mix
// call. The forward composes the sass_select and mix kernels of the device with
// the ratio kernel of csrc/fused.h, without leaving C++ (on CUDA, small batches
// get their pairs and ratios from one block instead); the autograd node is a
// C++ autograd Function registered at the Autograd key, whose backward is the
// fused_mix_backward operator (so torch.compile traces it like any other op).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "autograd/combined_grads.h"
#include "checks.h"
#include "fused.h"
#include "op_handles.h"

namespace msmix {
namespace {

MixRatios mix_ratios_on_device(const at::Tensor& intensities, const at::Tensor& labels, const at::Tensor& idx1,
                               const at::Tensor& idx2, const at::Tensor& lam0) {
#ifdef MSMIX_WITH_CUDA
  if (intensities.is_cuda()) return mix_ratios_cuda(intensities, labels, idx1, idx2, lam0);
#endif
  TORCH_CHECK(intensities.is_cpu(), "fused_mix: no kernel for intensities on ", intensities.device());
  return mix_ratios_cpu(intensities, labels, idx1, idx2, lam0);
}

FusedResult fused_mix_forward_kernel(at::TensorList feats, const at::Tensor& labels, const at::Tensor& intensities,
                                  int64_t num_mix, double threshold, const at::Tensor& seed, double alpha) {
  const int64_t batch = check_sass_args(feats, num_mix, threshold, seed, alpha, "fused_mix");
  check_intensities(intensities, static_cast<int64_t>(feats.size()), batch, feats[0], "fused_mix");
  check_labels(labels, batch, feats[0], "fused_mix");  // read by the ratio kernels before mix checks them
  const c10::DeviceGuard guard(feats[0].device());
  at::Tensor idx1, idx2, lam0;
  MixRatios ratios;
#ifdef MSMIX_WITH_CUDA
  // Small batches on CUDA: the pairs and the ratios from one block (4 launches in all).
  if (feats[0].is_cuda()) {
    if (auto drawn = draw_pairs_with_ratios_cuda(feats, labels, intensities, num_mix, threshold, seed, alpha)) {
      idx1 = drawn->idx1, idx2 = drawn->idx2, lam0 = drawn->lam0;
      ratios = std::move(drawn->ratios);
    }
  }
#endif
  if (!idx1.defined()) {
    std::tie(idx1, idx2, lam0) = sass_select_op().call(feats, num_mix, threshold, seed, alpha);
    ratios = mix_ratios_on_device(intensities, labels, idx1, idx2, lam0);
  }
  auto& [lam, lam_label, labels1, labels2] = ratios;
  auto [feats_out, labels_out] = mix_op().call(feats, labels, idx1, idx2, lam, lam_label);
  return {std::move(feats_out), labels_out, idx1, idx2, lam, lam_label, lam0, labels1, labels2};
}

FusedGrads fused_mix_backward_kernel(at::TensorList grad_feats_out, const at::Tensor& grad_labels_out,
                                     const OptionalTensor& grad_lam_opt, const OptionalTensor& grad_lam_label_opt,
                                     const OptionalTensor& grad_labels1_opt, const OptionalTensor& grad_labels2_opt,
                                     at::TensorList feats, const at::Tensor& labels, const at::Tensor& intensities,
                                     const at::Tensor& idx1, const at::Tensor& idx2, const at::Tensor& lam,
                                     const at::Tensor& lam_label, std::array<bool, 3> output_mask) {
  const auto [need_feats, need_labels, need_intensities] = output_mask;
  // Absent (undefined) gradients are zero.
  const at::Tensor grad_lam = grad_lam_opt.value_or(at::Tensor()),
                   grad_lam_label = grad_lam_label_opt.value_or(at::Tensor()),
                   grad_labels1 = grad_labels1_opt.value_or(at::Tensor()),
                   grad_labels2 = grad_labels2_opt.value_or(at::Tensor());
  check_fused_backward_args(grad_lam, grad_lam_label, grad_labels1, grad_labels2, intensities, lam,
                            need_intensities);
  const c10::DeviceGuard guard(grad_labels_out.device());
  // Internal ops on gradients: no autograd tracking below this kernel (its Autograd
  // fallback, which refuses a second derivative, has already run).
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  // lam and lam_label depend on the intensities only: their gradients are needed for those alone.
  auto [grad_feats, grad_labels, grad_lam_total, grad_lam_label_total] = mix_backward_op().call(
      grad_feats_out, grad_labels_out, need_intensities ? feats : at::TensorList(),
      need_intensities ? labels : grad_labels_out.new_empty({0}), idx1, idx2, lam, lam_label,
      {need_feats, need_labels, need_intensities, need_intensities});
  at::Tensor grad_intensities;  // [0] when not needed
  const bool on_cuda = grad_labels_out.is_cuda();
#ifndef MSMIX_WITH_CUDA
  TORCH_CHECK(!on_cuda, "fused_mix_backward: msmix_ext was built without its CUDA kernels");
#endif
  if (need_labels && (grad_labels1.defined() || grad_labels2.defined())) {
    const at::Tensor& some = grad_labels1.defined() ? grad_labels1 : grad_labels2;
    const at::Tensor g1 = grad_labels1.defined() ? grad_labels1 : at::zeros_like(some);
    const at::Tensor g2 = grad_labels2.defined() ? grad_labels2 : at::zeros_like(some);
#ifdef MSMIX_WITH_CUDA
    if (on_cuda) add_picked_label_grads_cuda(grad_labels, g1, g2, idx1, idx2);
#endif
    if (!on_cuda) add_picked_label_grads_cpu(grad_labels, g1, g2, idx1, idx2);
  }
  if (need_intensities) {
    if (grad_lam.defined()) grad_lam_total.add_(grad_lam);
    if (grad_lam_label.defined()) grad_lam_label_total.add_(grad_lam_label);
#ifdef MSMIX_WITH_CUDA
    if (on_cuda)
      grad_intensities = mix_ratios_backward_cuda(grad_lam_total, grad_lam_label_total, intensities, idx1, idx2);
#endif
    if (!on_cuda)
      grad_intensities = mix_ratios_backward_cpu(grad_lam_total, grad_lam_label_total, intensities, idx1, idx2);
  } else {
    grad_intensities = lam.new_empty({0});
  }
  return {std::move(grad_feats), grad_labels, grad_intensities};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Outputs in schema order, flattened: feats_out[0..M), labels_out, idx1, idx2,
// lam, lam_label, lam0, labels1, labels2.
class FusedMixFunction : public torch::autograd::Function<FusedMixFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList feats, const at::Tensor& labels,
                               const at::Tensor& intensities, int64_t num_mix, double threshold,
                               const at::Tensor& seed, double alpha) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [feats_out, labels_out, idx1, idx2, lam, lam_label, lam0, labels1, labels2] =
        fused_mix_op().call(feats, labels, intensities, num_mix, threshold, seed, alpha);
    const int64_t num_feats = static_cast<int64_t>(feats.size());
    const bool need_intensities = intensities.requires_grad();
    // feats and labels are read only by the intensities' gradient: saved only then.
    variable_list saved;
    if (need_intensities) saved.insert(saved.end(), feats.begin(), feats.end());
    saved.insert(saved.end(), {need_intensities ? labels : at::Tensor(), intensities, idx1, idx2, lam, lam_label});
    ctx->save_for_backward(saved);
    ctx->saved_data["num_feats"] = num_feats;
    ctx->saved_data["saved_feats"] = need_intensities;
    // Undefined output gradients stay undefined (no zero tensors for lam, labels1, ...);
    // the layouts let backward build the rare zero one of a combined tensor.
    ctx->set_materialize_grads(false);
    ctx->saved_data["combined_layouts"] = combined_layouts(feats_out, labels_out);
    ctx->mark_non_differentiable({idx1, idx2, lam0});
    variable_list out(feats_out.begin(), feats_out.end());
    out.insert(out.end(), {labels_out, idx1, idx2, lam, lam_label, lam0, labels1, labels2});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t num_feats = ctx->saved_data["num_feats"].toInt();
    const bool saved_feats = ctx->saved_data["saved_feats"].toBool();
    variable_list saved = ctx->get_saved_variables();
    const std::vector<at::Tensor> feats(saved.begin(), saved.begin() + (saved_feats ? num_feats : 0));
    const auto rest = saved.begin() + (saved_feats ? num_feats : 0);
    const at::Tensor &labels = rest[0], &intensities = rest[1], &idx1 = rest[2], &idx2 = rest[3],
                     &lam = rest[4], &lam_label = rest[5];
    std::vector<at::Tensor> grad_combined =
        combined_gradients(grads, ctx->saved_data["combined_layouts"].toIntVector(), idx1.device());
    const at::Tensor grad_labels_out = grad_combined.back();
    grad_combined.pop_back();
    const std::vector<at::Tensor>& grad_feats_out = grad_combined;
    const auto g = grads.begin() + num_feats;  // labels_out, idx1, idx2, lam, lam_label, lam0, labels1, labels2
    auto optional = [](const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : OptionalTensor(); };
    bool need_feats = false;
    for (int64_t m = 0; m < num_feats; ++m) need_feats = need_feats || ctx->needs_input_grad(m);
    const bool need_labels = ctx->needs_input_grad(num_feats);
    const bool need_intensities = ctx->needs_input_grad(num_feats + 1);
    auto [grad_feats, grad_labels, grad_intensities] =
        fused_mix_backward_op().call(grad_feats_out, grad_labels_out, optional(g[3]), optional(g[4]),
                                     optional(g[6]), optional(g[7]), feats,
                labels.defined() ? labels : grad_labels_out.new_empty({0}), intensities, idx1, idx2, lam, lam_label,
                {need_feats, need_labels, need_intensities});
    variable_list result;
    for (int64_t m = 0; m < num_feats; ++m)
      result.push_back(need_feats && ctx->needs_input_grad(m) ? grad_feats[m] : at::Tensor());
    result.push_back(need_labels ? grad_labels : at::Tensor());
    result.push_back(need_intensities ? grad_intensities : at::Tensor());
    // num_mix, threshold, seed, alpha
    result.insert(result.end(), {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()});
    return result;
  }
};

FusedResult fused_mix_autograd(at::TensorList feats, const at::Tensor& labels, const at::Tensor& intensities,
                            int64_t num_mix, double threshold, const at::Tensor& seed, double alpha) {
  const variable_list out =
      FusedMixFunction::apply(feats, labels, intensities, num_mix, threshold, seed, alpha);
  const int64_t num_feats = static_cast<int64_t>(feats.size());
  const auto rest = out.begin() + num_feats;
  return {std::vector<at::Tensor>(out.begin(), rest), rest[0], rest[1], rest[2], rest[3], rest[4], rest[5],
          rest[6], rest[7]};
}

}  // namespace

TORCH_LIBRARY_IMPL(msmix, CompositeExplicitAutograd, m) {
  m.impl("fused_mix", &fused_mix_forward_kernel);
  m.impl("fused_mix_backward", &fused_mix_backward_kernel);
}

TORCH_LIBRARY_IMPL(msmix, Autograd, m) { m.impl("fused_mix", &fused_mix_autograd); }

}  // namespace msmix
