// The per-device pieces of fused_mix that are not operators of their own: the
// mixing ratios (design.md §3, 5) and their gradients. csrc/fused.cpp composes
// them with the sass_select and mix operators; each has a CPU and a CUDA kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "ratio_math.h"
#include "rows.h"

namespace msmix {

// t in dtype: t itself when it already is (Tensor::to would still cost a dispatch).
inline at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// lam [M, K] and lam_label [K] in the intensities' dtype, bitwise equal to
// msmix_ext.ratios.mix_ratios(intensities, idx1, idx2, lam0), and the picked
// labels labels[idx1], labels[idx2] [K, ...] that fused_mix returns with them
// (copied in the same pass: on CUDA that saves the two index_select launches).
struct MixRatios {
  at::Tensor lam, lam_label, labels1, labels2;
};

// Where the picked labels go: labels1 and labels2 [K, ...] from the contiguous `labels`.
inline PickedLabels picked_labels(const at::Tensor& labels, at::Tensor& labels1, at::Tensor& labels2) {
  return {static_cast<const unsigned char*>(labels.const_data_ptr()),
          static_cast<unsigned char*>(labels1.mutable_data_ptr()),
          static_cast<unsigned char*>(labels2.mutable_data_ptr()), row_width(labels) * labels.element_size()};
}

MixRatios mix_ratios_cpu(const at::Tensor& intensities, const at::Tensor& labels, const at::Tensor& idx1,
                         const at::Tensor& idx2, const at::Tensor& lam0);

// The gradient of the intensities [M, B] for the total gradients of lam:
// grad_lam [M, K] (what reached lam directly) plus grad_lam_label [K] / M.
at::Tensor mix_ratios_backward_cpu(const at::Tensor& grad_lam, const at::Tensor& grad_lam_label,
                                   const at::Tensor& intensities, const at::Tensor& idx1,
                                   const at::Tensor& idx2);

// grad_labels[b] += sum of grad_labels1[k] over idx1[k] == b, and alike for idx2
// (the gradients of labels1 = labels[idx1], labels2 = labels[idx2]), in k order.
void add_picked_label_grads_cpu(at::Tensor& grad_labels, const at::Tensor& grad_labels1,
                                const at::Tensor& grad_labels2, const at::Tensor& idx1,
                                const at::Tensor& idx2);

#ifdef MSMIX_WITH_CUDA
MixRatios mix_ratios_cuda(const at::Tensor& intensities, const at::Tensor& labels, const at::Tensor& idx1,
                          const at::Tensor& idx2, const at::Tensor& lam0);
at::Tensor mix_ratios_backward_cuda(const at::Tensor& grad_lam, const at::Tensor& grad_lam_label,
                                    const at::Tensor& intensities, const at::Tensor& idx1,
                                    const at::Tensor& idx2);
// sass_select's draw (its idx1, idx2, lam0) together with mix_ratios_cuda's
// outputs, made by one block right after the Gram kernel; nullopt where that
// path does not apply (more than 65536 ordered pairs or K > 65536, or
// intensities not in the features' accumulate dtype).
struct DrawnPairs {
  at::Tensor idx1, idx2, lam0;
  MixRatios ratios;
};
std::optional<DrawnPairs> draw_pairs_with_ratios_cuda(at::TensorList feats, const at::Tensor& labels,
                                                      const at::Tensor& intensities, int64_t num_mix,
                                                      double threshold, const at::Tensor& seed, double alpha);
void add_picked_label_grads_cuda(at::Tensor& grad_labels, const at::Tensor& grad_labels1,
                                 const at::Tensor& grad_labels2, const at::Tensor& idx1,
                                 const at::Tensor& idx2);
#endif

}  // namespace msmix
