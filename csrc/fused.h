// The per-device pieces of fused_mix that are not operators of their own: the
// mixing ratios (design.md §3, 5) and their gradients. csrc/fused.cpp composes
// them with the sass_select and mix operators; each has a CPU and a CUDA kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace msmix {

// t in dtype: t itself when it already is (Tensor::to would still cost a dispatch).
inline at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// lam [M, K] and lam_label [K] in the intensities' dtype, bitwise equal to
// msmix_ext.ratios.mix_ratios(intensities, idx1, idx2, lam0).
std::tuple<at::Tensor, at::Tensor> mix_ratios_cpu(const at::Tensor& intensities, const at::Tensor& idx1,
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
std::tuple<at::Tensor, at::Tensor> mix_ratios_cuda(const at::Tensor& intensities, const at::Tensor& idx1,
                                                   const at::Tensor& idx2, const at::Tensor& lam0);
at::Tensor mix_ratios_backward_cuda(const at::Tensor& grad_lam, const at::Tensor& grad_lam_label,
                                    const at::Tensor& intensities, const at::Tensor& idx1,
                                    const at::Tensor& idx2);
void add_picked_label_grads_cuda(at::Tensor& grad_labels, const at::Tensor& grad_labels1,
                                 const at::Tensor& grad_labels2, const at::Tensor& idx1,
                                 const at::Tensor& idx2);
#endif

}  // namespace msmix
