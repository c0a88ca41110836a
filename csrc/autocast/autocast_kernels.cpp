// The msmix operators under torch.autocast (docs/design.md, "Mixed
// precision"). Registered at the AutocastCPU and AutocastCUDA keys, as
// torchvision does for its ops:
//   - similarity and sass_select read their features in float32 (float64 stays
//     float64), so the pairs equal those drawn from the features cast to
//     float32 up front;
//   - mix and fused_mix keep the feature dtype (fused_mix's SASS reads its
//     features in float32 anyway: the accumulate dtype of every half type); modalities that arrive in different dtypes
//     (an encoder under autocast next to raw float32 features) are promoted to
//     the widest, since the kernel takes one dtype for all of them.
// Each kernel then re-dispatches with every autocast key excluded, so the
// at::mm inside similarity is never re-cast to half precision. Autograd sits
// below these keys and records the casts, so gradients reach the inputs in
// their own dtypes.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "../op_handles.h"

namespace msmix {
namespace {

// float64 when any modality is float64 (autocast never narrows it), else float32.
at::ScalarType sass_dtype(at::TensorList feats) {
  for (const at::Tensor& f : feats)
    if (f.defined() && f.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

// The widest floating dtype among the modalities: float64 > float32 > the half
// types; float16 next to bfloat16 has no lossless common half type, so float32.
at::ScalarType widest_dtype(at::TensorList feats) {
  at::ScalarType widest = at::ScalarType::Undefined;
  for (const at::Tensor& f : feats) {
    if (!f.defined() || !f.is_floating_point()) continue;
    const at::ScalarType t = f.scalar_type();
    if (widest == at::ScalarType::Undefined || widest == t) {
      widest = t;
    } else if (t == at::kDouble || widest == at::kDouble) {
      widest = at::kDouble;
    } else {
      widest = at::kFloat;
    }
  }
  return widest;
}

// Casts the eligible feats to `dtype` (cached_cast leaves anything that is not
// a floating tensor of this device alone, so the kernels' checks still see it).
template <c10::DeviceType device>
std::vector<at::Tensor> cast_feats(at::TensorList feats, at::ScalarType dtype) {
  std::vector<at::Tensor> cast;
  cast.reserve(feats.size());
  for (const at::Tensor& f : feats)
    cast.push_back(dtype == at::ScalarType::Undefined || !f.defined() || f.scalar_type() == dtype
                       ? f
                       : at::autocast::cached_cast(dtype, f, device));
  return cast;
}

template <c10::DeviceType device>
at::Tensor similarity_autocast(at::TensorList feats) {
  const std::vector<at::Tensor> cast = cast_feats<device>(feats, sass_dtype(feats));
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return similarity_op().call(cast);
}

template <c10::DeviceType device>
SassResult sass_select_autocast(at::TensorList feats, int64_t num_mix, double threshold,
                          const at::Tensor& seed, double alpha) {
  const std::vector<at::Tensor> cast = cast_feats<device>(feats, sass_dtype(feats));
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return sass_select_op().call(cast, num_mix, threshold, seed, alpha);
}

template <c10::DeviceType device>
MixResult mix_autocast(at::TensorList feats, const at::Tensor& labels, const at::Tensor& idx1,
                   const at::Tensor& idx2, const at::Tensor& lam, const at::Tensor& lam_label) {
  const std::vector<at::Tensor> cast = cast_feats<device>(feats, widest_dtype(feats));
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return mix_op().call(cast, labels, idx1, idx2, lam, lam_label);
}

// The backward receives what mix saved (already one dtype): it only needs
// autocast kept out of the kernel, for a backward run inside an autocast region.
template <c10::DeviceType device>
MixGrads mix_backward_autocast(at::TensorList grad_feats_out, const at::Tensor& grad_labels_out,
                               at::TensorList feats, const at::Tensor& labels, const at::Tensor& idx1,
                               const at::Tensor& idx2, const at::Tensor& lam,
                               const at::Tensor& lam_label, std::array<bool, 4> output_mask) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return mix_backward_op().call(grad_feats_out, grad_labels_out, feats, labels, idx1, idx2, lam, lam_label,
                 output_mask);
}

template <c10::DeviceType device>
FusedResult fused_mix_autocast(at::TensorList feats, const at::Tensor& labels, const at::Tensor& intensities,
                            int64_t num_mix, double threshold, const at::Tensor& seed, double alpha) {
  const std::vector<at::Tensor> cast = cast_feats<device>(feats, widest_dtype(feats));
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return fused_mix_op().call(cast, labels, intensities, num_mix, threshold, seed, alpha);
}

template <c10::DeviceType device>
FusedGrads fused_mix_backward_autocast(at::TensorList grad_feats_out, const at::Tensor& grad_labels_out,
                                       const OptionalTensor& grad_lam, const OptionalTensor& grad_lam_label,
                                       const OptionalTensor& grad_labels1, const OptionalTensor& grad_labels2,
                                       at::TensorList feats, const at::Tensor& labels,
                                       const at::Tensor& intensities, const at::Tensor& idx1,
                                       const at::Tensor& idx2, const at::Tensor& lam, const at::Tensor& lam_label,
                                       std::array<bool, 3> output_mask) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return fused_mix_backward_op().call(grad_feats_out, grad_labels_out, grad_lam, grad_lam_label, grad_labels1,
                                      grad_labels2, feats, labels, intensities, idx1, idx2, lam, lam_label,
                                      output_mask);
}

template <c10::DeviceType device>
void register_autocast(torch::Library& m) {
  m.impl("similarity", &similarity_autocast<device>);
  m.impl("sass_select", &sass_select_autocast<device>);
  m.impl("mix", &mix_autocast<device>);
  m.impl("mix_backward", &mix_backward_autocast<device>);
  m.impl("fused_mix", &fused_mix_autocast<device>);
  m.impl("fused_mix_backward", &fused_mix_backward_autocast<device>);
}

}  // namespace

TORCH_LIBRARY_IMPL(msmix, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }

TORCH_LIBRARY_IMPL(msmix, AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }

}  // namespace msmix
