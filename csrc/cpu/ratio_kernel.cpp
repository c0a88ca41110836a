// Mixing ratios of fused_mix on the CPU (design.md §3, 5): a few hundred flops
// per call, so plain serial loops; no parallel region is worth its start-up.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <vector>

#include "../fused.h"
#include "../ratio_math.h"
#include "../rows.h"

namespace msmix {
namespace {

template <typename scalar_t>
void mix_ratios_forward_kernel(const scalar_t* intensities, const int64_t* idx1, const int64_t* idx2,
                               const scalar_t* lam0, scalar_t* lam, scalar_t* lam_label,
                               int64_t num_modalities, int64_t batch, int64_t num_mix) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> lam_sum(num_mix, acc_t(0));
  for (int64_t m = 0; m < num_modalities; ++m) {
    const scalar_t* row = intensities + m * batch;
    const auto bounds = weight_bounds<scalar_t, acc_t>(row, batch);
    for (int64_t k = 0; k < num_mix; ++k) {
      const acc_t r = pair_ratio<scalar_t>(row, idx1[k], idx2[k], static_cast<acc_t>(lam0[k]), bounds);
      lam[m * num_mix + k] = static_cast<scalar_t>(r);
      lam_sum[k] += r;  // lam.mean(0): summed over m in order in acc_t, divided, rounded once
    }
  }
  for (int64_t k = 0; k < num_mix; ++k)
    lam_label[k] = static_cast<scalar_t>(lam_sum[k] / static_cast<acc_t>(num_modalities));
}

template <typename scalar_t>
void mix_ratios_backward_kernel(const scalar_t* grad_lam, const scalar_t* grad_lam_label,
                                const scalar_t* intensities, const int64_t* idx1, const int64_t* idx2,
                                scalar_t* grad_intensities, int64_t num_modalities, int64_t batch,
                                int64_t num_mix) {
  std::vector<at::opmath_type<scalar_t>> work(3 * batch);
  for (int64_t m = 0; m < num_modalities; ++m)
    intensity_grad_row<scalar_t>(intensities + m * batch, grad_lam + m * num_mix, grad_lam_label, idx1, idx2,
                                 num_modalities, batch, num_mix, work.data(), grad_intensities + m * batch);
}

}  // namespace

MixRatios mix_ratios_cpu(const at::Tensor& intensities, const at::Tensor& labels, const at::Tensor& idx1,
                         const at::Tensor& idx2, const at::Tensor& lam0) {
  const at::Tensor i1 = idx1.contiguous(), i2 = idx2.contiguous();
  const at::Tensor label_rows = labels.contiguous();
  at::Tensor labels1 = at::empty(with_rows(labels, i1.size(0)), labels.options());
  at::Tensor labels2 = at::empty_like(labels1);
  const PickedLabels picked = picked_labels(label_rows, labels1, labels2);
  for (int64_t k = 0; k < i1.size(0); ++k)
    copy_picked_labels(picked, i1.const_data_ptr<int64_t>(), i2.const_data_ptr<int64_t>(), k);
  const at::Tensor source = intensities.contiguous();
  const at::Tensor base = in_dtype(lam0, source.scalar_type()).contiguous();  // lam0.to(w.dtype)
  const int64_t num_modalities = source.size(0), batch = source.size(1), num_mix = idx1.size(0);
  at::Tensor lam = at::empty({num_modalities, num_mix}, source.options());
  at::Tensor lam_label = at::empty({num_mix}, source.options());
  if (num_mix == 0 || num_modalities == 0) return {lam, lam_label, labels1, labels2};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, source.scalar_type(), "mix_ratios", [&] {
    mix_ratios_forward_kernel<scalar_t>(source.data_ptr<scalar_t>(), i1.data_ptr<int64_t>(), i2.data_ptr<int64_t>(),
                                        base.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(),
                                        lam_label.data_ptr<scalar_t>(), num_modalities, batch, num_mix);
  });
  return {lam, lam_label, labels1, labels2};
}

at::Tensor mix_ratios_backward_cpu(const at::Tensor& grad_lam, const at::Tensor& grad_lam_label,
                                   const at::Tensor& intensities, const at::Tensor& idx1,
                                   const at::Tensor& idx2) {
  const at::Tensor source = intensities.contiguous();
  const at::Tensor g_lam = in_dtype(grad_lam, source.scalar_type()).contiguous();
  const at::Tensor g_label = in_dtype(grad_lam_label, source.scalar_type()).contiguous();
  at::Tensor grad = at::empty_like(source);
  if (source.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, source.scalar_type(), "mix_ratios_backward", [&] {
    mix_ratios_backward_kernel<scalar_t>(g_lam.data_ptr<scalar_t>(), g_label.data_ptr<scalar_t>(),
                                         source.data_ptr<scalar_t>(), idx1.contiguous().data_ptr<int64_t>(),
                                         idx2.contiguous().data_ptr<int64_t>(), grad.data_ptr<scalar_t>(),
                                         source.size(0), source.size(1), idx1.size(0));
  });
  return grad;
}

void add_picked_label_grads_cpu(at::Tensor& grad_labels, const at::Tensor& grad_labels1,
                                const at::Tensor& grad_labels2, const at::Tensor& idx1,
                                const at::Tensor& idx2) {
  const at::Tensor g1 = in_dtype(grad_labels1, grad_labels.scalar_type()).contiguous();
  const at::Tensor g2 = in_dtype(grad_labels2, grad_labels.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_labels.scalar_type(), "fused_mix_backward", [&] {
    add_picked_label_grads<scalar_t>(grad_labels.data_ptr<scalar_t>(), g1.data_ptr<scalar_t>(),
                                     g2.data_ptr<scalar_t>(), idx1.contiguous().data_ptr<int64_t>(),
                                     idx2.contiguous().data_ptr<int64_t>(), idx1.size(0));
  });
}

}  // namespace msmix
