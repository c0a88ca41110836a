// The gradients of the combined outputs (feats_out[0..M), labels_out) of mix and
// fused_mix, as their backward operators take them. Their autograd Functions set
// set_materialize_grads(false), so an output the loss did not read arrives with
// an undefined gradient; the operator then gets one zero expanded to that
// output's shape (the CPU kernels read it in place), not a [B + K] fill.
#pragma once

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <vector>

namespace msmix {

// dtype, dim and sizes of each combined output, flattened, for ctx->saved_data.
inline std::vector<int64_t> combined_layouts(at::TensorList feats_out, const at::Tensor& labels_out) {
  std::vector<int64_t> layouts;
  auto save = [&](const at::Tensor& t) {
    layouts.push_back(static_cast<int64_t>(t.scalar_type()));
    layouts.push_back(t.dim());
    layouts.insert(layouts.end(), t.sizes().begin(), t.sizes().end());
  };
  for (const at::Tensor& t : feats_out) save(t);
  save(labels_out);
  return layouts;
}

// grads[0..M] (feats_out..., labels_out), with an expanded zero on `device` for
// each undefined one; `layouts` is combined_layouts' result.
inline std::vector<at::Tensor> combined_gradients(const torch::autograd::variable_list& grads,
                                                  const std::vector<int64_t>& layouts, const at::Device& device) {
  std::vector<at::Tensor> result;
  for (size_t i = 0, pos = 0; pos < layouts.size(); ++i) {
    const auto dtype = static_cast<at::ScalarType>(layouts[pos]);
    const c10::IntArrayRef shape(layouts.data() + pos + 2, static_cast<size_t>(layouts[pos + 1]));
    pos += 2 + shape.size();
    result.push_back(grads[i].defined() ? grads[i]
                                        : at::zeros({}, at::TensorOptions().dtype(dtype).device(device)).expand(shape));
  }
  return result;
}

}  // namespace msmix
