// Autograd of msmix::mix: a C++ autograd Function at the Autograd key whose
// backward is the msmix::mix_backward operator (so torch.compile traces it like
// any other op). It replaced a torch.library Python autograd that cost ~90 us
// per forward call with inputs requiring grad (pooled, B = 64), 3x the kernel.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "../op_handles.h"
#include "combined_grads.h"

namespace msmix {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Outputs: feats_out[0..M), labels_out. Inputs as autograd numbers them: feats
// [0, M), labels M, idx1 M + 1, idx2 M + 2, lam M + 3, lam_label M + 4.
class MixFunction : public torch::autograd::Function<MixFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList feats, const at::Tensor& labels,
                               const at::Tensor& idx1, const at::Tensor& idx2, const at::Tensor& lam,
                               const at::Tensor& lam_label) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [feats_out, labels_out] = mix_op().call(feats, labels, idx1, idx2, lam, lam_label);
    // feats and labels are read only by the gradients of lam and lam_label: saved only then.
    const bool save_feats = lam.requires_grad(), save_labels = lam_label.requires_grad();
    variable_list saved;
    if (save_feats) saved.insert(saved.end(), feats.begin(), feats.end());
    saved.insert(saved.end(), {save_labels ? labels : at::Tensor(), idx1, idx2, lam, lam_label});
    ctx->save_for_backward(saved);
    ctx->saved_data["num_feats"] = static_cast<int64_t>(feats.size());
    ctx->saved_data["saved_feats"] = save_feats;
    ctx->set_materialize_grads(false);
    ctx->saved_data["combined_layouts"] = combined_layouts(feats_out, labels_out);
    variable_list out(feats_out.begin(), feats_out.end());
    out.push_back(labels_out);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t num_feats = ctx->saved_data["num_feats"].toInt();
    const bool saved_feats = ctx->saved_data["saved_feats"].toBool();
    const variable_list saved = ctx->get_saved_variables();
    const std::vector<at::Tensor> feats(saved.begin(), saved.begin() + (saved_feats ? num_feats : 0));
    const auto rest = saved.begin() + (saved_feats ? num_feats : 0);
    const at::Tensor &labels = rest[0], &idx1 = rest[1], &idx2 = rest[2], &lam = rest[3], &lam_label = rest[4];
    std::vector<at::Tensor> grad_feats_out =
        combined_gradients(grads, ctx->saved_data["combined_layouts"].toIntVector(), idx1.device());
    const at::Tensor grad_labels_out = grad_feats_out.back();
    grad_feats_out.pop_back();
    bool need_feats = false;
    for (int64_t m = 0; m < num_feats; ++m) need_feats = need_feats || ctx->needs_input_grad(m);
    const bool need_labels = ctx->needs_input_grad(num_feats);
    const bool need_lam = ctx->needs_input_grad(num_feats + 3);
    const bool need_lam_label = ctx->needs_input_grad(num_feats + 4);
    auto [grad_feats, grad_labels, grad_lam, grad_lam_label] = mix_backward_op().call(
        grad_feats_out, grad_labels_out, feats, labels.defined() ? labels : grad_labels_out.new_empty({0}), idx1,
        idx2, lam, lam_label, {need_feats, need_labels, need_lam, need_lam_label});
    variable_list result;
    for (int64_t m = 0; m < num_feats; ++m)
      result.push_back(need_feats && ctx->needs_input_grad(m) ? grad_feats[m] : at::Tensor());
    result.push_back(need_labels ? grad_labels : at::Tensor());
    result.insert(result.end(), {at::Tensor(), at::Tensor()});  // idx1, idx2
    result.push_back(need_lam ? grad_lam : at::Tensor());
    result.push_back(need_lam_label ? grad_lam_label : at::Tensor());
    return result;
  }
};

MixResult mix_autograd(at::TensorList feats, const at::Tensor& labels, const at::Tensor& idx1,
                       const at::Tensor& idx2, const at::Tensor& lam, const at::Tensor& lam_label) {
  const variable_list out = MixFunction::apply(feats, labels, idx1, idx2, lam, lam_label);
  return {std::vector<at::Tensor>(out.begin(), out.end() - 1), out.back()};
}

}  // namespace

TORCH_LIBRARY_IMPL(msmix, Autograd, m) { m.impl("mix", &mix_autograd); }

}  // namespace msmix
