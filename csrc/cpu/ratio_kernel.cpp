// Mixing ratios of fused_mix on the CPU (design.md §3, 5): a few hundred flops
// per call, so plain serial loops; no parallel region is worth its start-up.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <vector>

#include "../fused.h"
#include "../ratio_math.h"

namespace msmix {
namespace {

template <typename scalar_t>
void mix_ratios_forward_kernel(const scalar_t* intensities, const int64_t* idx1, const int64_t* idx2,
                               const scalar_t* lam0, scalar_t* lam, scalar_t* lam_label,
                               int64_t num_modalities, int64_t batch, int64_t num_mix) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> weights(batch);
  std::vector<acc_t> lam_sum(num_mix, acc_t(0));
  for (int64_t m = 0; m < num_modalities; ++m) {
    const scalar_t* row = intensities + m * batch;
    acc_t lo = std::abs(static_cast<acc_t>(row[0])), hi = lo;
    for (int64_t b = 1; b < batch; ++b) {
      const acc_t a = std::abs(static_cast<acc_t>(row[b]));
      lo = std::min(lo, a);
      hi = std::max(hi, a);
    }
    const acc_t range = weight_range<scalar_t>(lo, hi);
    for (int64_t b = 0; b < batch; ++b)
      weights[b] = intensity_weight<scalar_t>(std::abs(static_cast<acc_t>(row[b])), lo, range);
    for (int64_t k = 0; k < num_mix; ++k) {
      const acc_t r = modality_ratio<scalar_t>(static_cast<acc_t>(lam0[k]), weights[idx1[k]], weights[idx2[k]]);
      lam[m * num_mix + k] = static_cast<scalar_t>(r);
      lam_sum[k] += r;  // lam.mean(0): summed over m in order in acc_t, divided, rounded once
    }
  }
  for (int64_t k = 0; k < num_mix; ++k)
    lam_label[k] = static_cast<scalar_t>(lam_sum[k] / static_cast<acc_t>(num_modalities));
}

// The weights' min-max normalisation, |I| and the ratio formula differentiated
// as autograd does (a tie for the min or max shares its gradient evenly).
template <typename scalar_t>
void mix_ratios_backward_kernel(const scalar_t* grad_lam, const scalar_t* grad_lam_label,
                                const scalar_t* intensities, const int64_t* idx1, const int64_t* idx2,
                                scalar_t* grad_intensities, int64_t num_modalities, int64_t batch,
                                int64_t num_mix) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> magnitudes(batch), weights(batch), grad_weights(batch);
  for (int64_t m = 0; m < num_modalities; ++m) {
    const scalar_t* row = intensities + m * batch;
    for (int64_t b = 0; b < batch; ++b) magnitudes[b] = std::abs(static_cast<acc_t>(row[b]));
    const acc_t lo = *std::min_element(magnitudes.begin(), magnitudes.end());
    const acc_t hi = *std::max_element(magnitudes.begin(), magnitudes.end());
    const acc_t range = weight_range<scalar_t>(lo, hi);
    for (int64_t b = 0; b < batch; ++b) {
      weights[b] = intensity_weight<scalar_t>(magnitudes[b], lo, range);
      grad_weights[b] = 0;
    }
    for (int64_t k = 0; k < num_mix; ++k) {
      const acc_t g = static_cast<acc_t>(grad_lam[m * num_mix + k]) +
                      static_cast<acc_t>(grad_lam_label[k]) / static_cast<acc_t>(num_modalities);
      acc_t g_w1, g_w2;
      modality_ratio_backward(g, weights[idx1[k]], weights[idx2[k]], &g_w1, &g_w2);
      grad_weights[idx1[k]] += g_w1;
      grad_weights[idx2[k]] += g_w2;
    }
    // w = (a - lo) / range: d/da = 1 / range; lo and hi through range and the numerator.
    acc_t sum_grad = 0, grad_range = 0;
    int64_t lo_count = 0, hi_count = 0;
    for (int64_t b = 0; b < batch; ++b) {
      sum_grad += grad_weights[b];
      grad_range -= grad_weights[b] * (magnitudes[b] - lo) / (range * range);
      lo_count += magnitudes[b] == lo;
      hi_count += magnitudes[b] == hi;
    }
    const acc_t grad_lo = (-sum_grad / range - grad_range) / static_cast<acc_t>(lo_count);
    const acc_t grad_hi = grad_range / static_cast<acc_t>(hi_count);
    for (int64_t b = 0; b < batch; ++b) {
      acc_t g = grad_weights[b] / range;
      if (magnitudes[b] == lo) g += grad_lo;
      if (magnitudes[b] == hi) g += grad_hi;
      grad_intensities[m * batch + b] = static_cast<scalar_t>(g * abs_grad_sign(static_cast<acc_t>(row[b])));
    }
  }
}

template <typename scalar_t>
void add_picked_label_grads_kernel(scalar_t* grad_labels, const scalar_t* grad1, const scalar_t* grad2,
                                   const int64_t* idx1, const int64_t* idx2, int64_t num_mix) {
  for (int64_t k = 0; k < num_mix; ++k) grad_labels[idx1[k]] += grad1[k];
  for (int64_t k = 0; k < num_mix; ++k) grad_labels[idx2[k]] += grad2[k];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mix_ratios_cpu(const at::Tensor& intensities, const at::Tensor& idx1,
                                                  const at::Tensor& idx2, const at::Tensor& lam0) {
  const at::Tensor source = intensities.contiguous();
  const at::Tensor base = lam0.to(source.scalar_type()).contiguous();  // lam0.to(w.dtype)
  const int64_t num_modalities = source.size(0), batch = source.size(1), num_mix = idx1.size(0);
  at::Tensor lam = at::empty({num_modalities, num_mix}, source.options());
  at::Tensor lam_label = at::empty({num_mix}, source.options());
  if (num_mix == 0 || num_modalities == 0) return {lam, lam_label};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, source.scalar_type(), "mix_ratios", [&] {
    mix_ratios_forward_kernel<scalar_t>(source.data_ptr<scalar_t>(), idx1.contiguous().data_ptr<int64_t>(),
                                        idx2.contiguous().data_ptr<int64_t>(), base.data_ptr<scalar_t>(),
                                        lam.data_ptr<scalar_t>(), lam_label.data_ptr<scalar_t>(),
                                        num_modalities, batch, num_mix);
  });
  return {lam, lam_label};
}

at::Tensor mix_ratios_backward_cpu(const at::Tensor& grad_lam, const at::Tensor& grad_lam_label,
                                   const at::Tensor& intensities, const at::Tensor& idx1,
                                   const at::Tensor& idx2) {
  const at::Tensor source = intensities.contiguous();
  const at::Tensor g_lam = grad_lam.to(source.scalar_type()).contiguous();
  const at::Tensor g_label = grad_lam_label.to(source.scalar_type()).contiguous();
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
  const at::Tensor g1 = grad_labels1.to(grad_labels.scalar_type()).contiguous();
  const at::Tensor g2 = grad_labels2.to(grad_labels.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_labels.scalar_type(), "fused_mix_backward", [&] {
    add_picked_label_grads_kernel<scalar_t>(grad_labels.data_ptr<scalar_t>(), g1.data_ptr<scalar_t>(),
                                            g2.data_ptr<scalar_t>(), idx1.contiguous().data_ptr<int64_t>(),
                                            idx2.contiguous().data_ptr<int64_t>(), idx1.size(0));
  });
}

}  // namespace msmix
