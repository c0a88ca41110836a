// Argument checks shared by every kernel. Each message names the argument
// and what was expected, so a bad call fails with a readable error.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace msmix {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The dtype SASS and the ratio gradients accumulate in: float64 for float64,
// float32 for every other floating dtype (msmix_ext/ops.py mirrors it for the fakes).
inline at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// feats: M >= 1 tensors [B, D_m] or [B, T_m, D_m], one floating dtype, one
// device, one batch size. Returns B.
inline int64_t check_feats(at::TensorList feats, const char* op) {
  TORCH_CHECK(!feats.empty(), op, ": feats must hold at least one modality, got M = 0");
  const at::Tensor& first = feats[0];
  const int64_t batch = first.dim() > 0 ? first.size(0) : -1;
  for (size_t m = 0; m < feats.size(); ++m) {
    const at::Tensor& f = feats[m];
    TORCH_CHECK(f.defined(), op, ": feats[", m, "] is undefined");
    TORCH_CHECK(f.dim() == 2 || f.dim() == 3, op, ": feats[", m,
                "] must be [B, D] or [B, T, D], got ", f.dim(), " dimensions ", f.sizes());
    TORCH_CHECK(is_supported_float(f.scalar_type()), op, ": feats[", m,
                "] must be float32, float64, float16 or bfloat16, got ", f.scalar_type());
    TORCH_CHECK(f.scalar_type() == first.scalar_type(), op, ": feats[", m, "] has dtype ",
                f.scalar_type(), " but feats[0] has ", first.scalar_type(),
                "; all modalities must share one dtype");
    TORCH_CHECK(f.device() == first.device(), op, ": feats[", m, "] is on ", f.device(),
                " but feats[0] is on ", first.device(), "; all tensors must be on one device");
    TORCH_CHECK(f.size(0) == batch, op, ": feats[", m, "] must have batch size ", batch,
                " (that of feats[0]), got ", f.size(0));
  }
  return batch;
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* op, const char* ref_name = "feats") {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
              " are on ", ref.device(), "; all tensors must be on one device");
}

inline void check_indices(const at::Tensor& idx, const char* name, int64_t num_mix,
                          const at::Tensor& ref, const char* op) {
  TORCH_CHECK(idx.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              idx.scalar_type());
  TORCH_CHECK(idx.dim() == 1 && idx.size(0) == num_mix, op, ": ", name, " must be [K] with K = ",
              num_mix, ", got ", idx.sizes());
  check_same_device(idx, name, ref, op);
}

// labels [B, ...], floating, on the features' device `ref`.
inline void check_labels(const at::Tensor& labels, int64_t batch, const at::Tensor& ref, const char* op) {
  TORCH_CHECK(labels.dim() >= 1 && labels.size(0) == batch, op,
              ": labels must be [B] or [B, ...] with B = ", batch, ", got ", labels.sizes());
  TORCH_CHECK(is_supported_float(labels.scalar_type()), op,
              ": labels must be a floating tensor, got ", labels.scalar_type());
  check_same_device(labels, "labels", ref, op);
}

// Checks of the mixing op: labels [B, ...], idx1/idx2 int64 [K], lam [M, K],
// lam_label [K] in one floating dtype.
inline void check_mix_args(at::TensorList feats, const at::Tensor& labels, const at::Tensor& idx1,
                           const at::Tensor& idx2, const at::Tensor& lam,
                           const at::Tensor& lam_label, const char* op) {
  const int64_t batch = check_feats(feats, op);
  const int64_t num_modalities = static_cast<int64_t>(feats.size());
  check_labels(labels, batch, feats[0], op);
  TORCH_CHECK(idx1.dim() == 1, op, ": idx1 must be [K], got ", idx1.sizes());
  const int64_t num_mix = idx1.size(0);
  check_indices(idx1, "idx1", num_mix, feats[0], op);
  check_indices(idx2, "idx2", num_mix, feats[0], op);
  TORCH_CHECK(lam.dim() == 2 && lam.size(0) == num_modalities && lam.size(1) == num_mix, op,
              ": lam must be [M, K] = [", num_modalities, ", ", num_mix, "], got ", lam.sizes());
  TORCH_CHECK(lam_label.dim() == 1 && lam_label.size(0) == num_mix, op,
              ": lam_label must be [K] = [", num_mix, "], got ", lam_label.sizes());
  TORCH_CHECK(is_supported_float(lam.scalar_type()), op, ": lam must be floating, got ",
              lam.scalar_type());
  TORCH_CHECK(lam_label.scalar_type() == lam.scalar_type(), op, ": lam_label has dtype ",
              lam_label.scalar_type(), " but lam has ", lam.scalar_type(), "; they must match");
  check_same_device(lam, "lam", feats[0], op);
  check_same_device(lam_label, "lam_label", feats[0], op);
}

// Checks of mix_backward (normally called by autograd with what mix saved, but
// also a public operator). Returns B, the number of unmixed rows.
inline int64_t check_mix_backward_args(at::TensorList grad_feats_out, const at::Tensor& grad_labels_out,
                                       at::TensorList feats, const at::Tensor& labels,
                                       const at::Tensor& idx1, const at::Tensor& idx2,
                                       const at::Tensor& lam, const at::Tensor& lam_label,
                                       bool need_lam, bool need_lam_label) {
  constexpr const char* op = "mix_backward";
  TORCH_CHECK(idx1.scalar_type() == at::kLong && idx2.scalar_type() == at::kLong && idx1.dim() == 1 &&
                  idx2.dim() == 1 && idx2.size(0) == idx1.size(0),
              op, ": idx1 and idx2 must be int64 [K], got ", idx1.sizes(), " and ", idx2.sizes());
  const int64_t num_mix = idx1.size(0);
  TORCH_CHECK(lam.dim() == 2 && lam.size(1) == num_mix && lam_label.dim() == 1 && lam_label.size(0) == num_mix,
              op, ": lam must be [M, K] and lam_label [K] with K = ", num_mix, ", got ", lam.sizes(), " and ",
              lam_label.sizes());
  const int64_t num_modalities = lam.size(0);
  TORCH_CHECK(static_cast<int64_t>(grad_feats_out.size()) == num_modalities, op, ": expected ",
              num_modalities, " feature gradients, got ", grad_feats_out.size());
  TORCH_CHECK(!need_lam || static_cast<int64_t>(feats.size()) == num_modalities, op,
              ": the lam gradient needs the ", num_modalities, " saved feats, got ", feats.size());
  TORCH_CHECK(grad_labels_out.dim() >= 1 && grad_labels_out.size(0) >= num_mix, op,
              ": grad_labels_out must be [B + K, ...] with K = ", num_mix, ", got ", grad_labels_out.sizes());
  const int64_t batch = grad_labels_out.size(0) - num_mix;
  const at::Tensor& ref = grad_labels_out;
  for (const at::Tensor& g : grad_feats_out) {
    check_same_device(g, "grad_feats_out", ref, op, "the gradients");
    TORCH_CHECK(g.dim() >= 1 && g.size(0) == batch + num_mix, op, ": every gradient must have B + K = ",
                batch + num_mix, " rows, got ", g.sizes());
  }
  check_same_device(idx1, "idx1", ref, op, "the gradients");
  check_same_device(idx2, "idx2", ref, op, "the gradients");
  check_same_device(lam, "lam", ref, op, "the gradients");
  check_same_device(lam_label, "lam_label", ref, op, "the gradients");
  if (need_lam)
    for (const at::Tensor& f : feats) check_same_device(f, "feats", ref, op, "the gradients");
  if (need_lam_label) check_same_device(labels, "labels", ref, op, "the gradients");
  return batch;
}

// intensities: [M, B] in a floating dtype on the feats' device (fused_mix).
inline void check_intensities(const at::Tensor& intensities, int64_t num_modalities, int64_t batch,
                              const at::Tensor& ref, const char* op) {
  TORCH_CHECK(intensities.dim() == 2 && intensities.size(0) == num_modalities && intensities.size(1) == batch,
              op, ": intensities must be [M, B] = [", num_modalities, ", ", batch, "], got ",
              intensities.sizes());
  TORCH_CHECK(is_supported_float(intensities.scalar_type()), op,
              ": intensities must be float32, float64, float16 or bfloat16, got ", intensities.scalar_type());
  check_same_device(intensities, "intensities", ref, op);
}

// What fused_mix_backward reads besides mix_backward's arguments (checked there).
// The optional gradients are undefined tensors when absent (zero).
inline void check_fused_backward_args(const at::Tensor& grad_lam, const at::Tensor& grad_lam_label,
                                      const at::Tensor& grad_labels1, const at::Tensor& grad_labels2,
                                      const at::Tensor& intensities, const at::Tensor& lam,
                                      bool need_intensities) {
  constexpr const char* op = "fused_mix_backward";
  const int64_t num_mix = lam.size(1);
  TORCH_CHECK(!grad_lam.defined() || grad_lam.sizes() == lam.sizes(), op, ": grad_lam must be shaped like lam ",
              lam.sizes(), ", got ", grad_lam.sizes());
  TORCH_CHECK(!grad_lam_label.defined() || (grad_lam_label.dim() == 1 && grad_lam_label.size(0) == num_mix), op,
              ": grad_lam_label must be [K] = [", num_mix, "], got ", grad_lam_label.sizes());
  for (const at::Tensor* g : {&grad_labels1, &grad_labels2})
    TORCH_CHECK(!g->defined() || (g->dim() >= 1 && g->size(0) == num_mix), op,
                ": grad_labels1 and grad_labels2 must be [K, ...] with K = ", num_mix, ", got ", g->sizes());
  TORCH_CHECK(!need_intensities || (intensities.dim() == 2 && intensities.size(0) == lam.size(0)), op,
              ": intensities must be [M, B] with M = ", lam.size(0), ", got ", intensities.sizes());
}

// The largest batch SASS accepts. The CUDA grid path (B > 256) sorts the keys of all B*B
// ordered pairs in one at::sort, which refuses a sorted dimension of more than
// INT_MAX elements: 46340^2 <= 2^31 - 1 < 46341^2. The CPU kernel has the same
// limit so that a batch fails alike on both devices.
constexpr int64_t kMaxSassBatch = 46340;

// similarity and SASS: M >= 1 feats (check_feats) and B >= 2 (S' is min-max
// normalised over the off-diagonal, which needs one pair). Returns B.
inline int64_t check_similarity_args(at::TensorList feats, const char* op) {
  const int64_t batch = check_feats(feats, op);
  TORCH_CHECK(batch >= 2, op, ": needs a batch of at least 2 samples to pair, got B = ", batch);
  return batch;
}

// check_similarity_args, B <= kMaxSassBatch, num_mix >= 1, 0 <= threshold < 1, alpha > 0; the seed
// is an int64 scalar tensor (on the feature device or the CPU) so it never
// forces a sync. The one check of these parameters: the Python layers
// (fused_mix, MSMix) pass them through. A bad value raises ValueError.
inline int64_t check_sass_args(at::TensorList feats, int64_t num_mix, double threshold,
                               const at::Tensor& seed, double alpha, const char* op) {
  const int64_t batch = check_similarity_args(feats, op);
  TORCH_CHECK(batch <= kMaxSassBatch, op, ": batch size B = ", batch, " is too large; B must be <= ",
              kMaxSassBatch, " because the CUDA kernel sorts all B*B ordered pairs in one sort of at ",
              "most 2^31 - 1 elements (both devices share the limit); split the batch");
  TORCH_CHECK_VALUE(num_mix >= 1, op, ": num_mix must be >= 1, got ", num_mix);
  TORCH_CHECK_VALUE(threshold >= 0.0 && threshold < 1.0, op, ": threshold must be in [0, 1), got ",
              threshold);
  TORCH_CHECK_VALUE(alpha > 0.0, op, ": alpha must be > 0, got ", alpha);
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1, op,
              ": seed must be a one-element int64 tensor, got ", seed.scalar_type(), " ",
              seed.sizes());
  TORCH_CHECK(seed.is_cpu() || seed.device() == feats[0].device(), op, ": seed is on ",
              seed.device(), "; it must be on the CPU or on the feats' device ",
              feats[0].device());
  return batch;
}

}  // namespace msmix
