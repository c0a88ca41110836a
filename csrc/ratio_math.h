// Mixing ratios from intensities (design.md §3 and 5), shared by the CPU and CUDA
// kernels of fused_mix. The forward rounds to the intensities' dtype after every
// step, exactly where msmix_ext.ratios.mix_ratios (plain torch ops) rounds, so the
// fused call equals the composed one bit for bit; the backward runs in the
// accumulate dtype.
#pragma once

#include "philox.h"  // MSMIX_HOST_DEVICE

namespace msmix {

// What a torch elementwise op on a scalar_t tensor stores: the result rounded
// to scalar_t (a no-op for float and double).
template <typename scalar_t, typename acc_t>
MSMIX_HOST_DEVICE acc_t round_to(acc_t x) {
  return static_cast<acc_t>(static_cast<scalar_t>(x));
}

// The epsilons of design.md §3 and 5, as torch converts a Python float for a
// scalar_t op.
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t ratio_eps() { return static_cast<acc_t>(1e-8); }
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t ratio_eps2() { return static_cast<acc_t>(2e-8); }

// w = (|I| - lo) / (hi - lo + 1e-8): range = hi - lo + 1e-8.
template <typename scalar_t, typename acc_t>
MSMIX_HOST_DEVICE acc_t weight_range(acc_t lo, acc_t hi) {
  return round_to<scalar_t>(round_to<scalar_t>(hi - lo) + ratio_eps<acc_t>());
}

template <typename scalar_t, typename acc_t>
MSMIX_HOST_DEVICE acc_t intensity_weight(acc_t magnitude, acc_t lo, acc_t range) {
  return round_to<scalar_t>(round_to<scalar_t>(magnitude - lo) / range);
}

// lam = (lam0 + (w1 + 1e-8) / (w1 + w2 + 2e-8)) / 2, lam0 already in scalar_t.
template <typename scalar_t, typename acc_t>
MSMIX_HOST_DEVICE acc_t modality_ratio(acc_t lam0, acc_t w1, acc_t w2) {
  const acc_t num = round_to<scalar_t>(w1 + ratio_eps<acc_t>());
  const acc_t den = round_to<scalar_t>(round_to<scalar_t>(w1 + w2) + ratio_eps2<acc_t>());
  return round_to<scalar_t>(round_to<scalar_t>(lam0 + round_to<scalar_t>(num / den)) / acc_t(2));
}

// The min-max weights of one modality's intensities `row` [B]: lo = min |I|
// and range (weight_range), in a serial pass (the same bits on any device).
template <typename scalar_t, typename acc_t>
struct WeightBounds {
  acc_t lo, range;
};

// |I|, as torch's abs.
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t magnitude(acc_t x) {
#ifdef __CUDA_ARCH__
  return fabs(x);
#else
  return std::abs(x);
#endif
}

template <typename scalar_t, typename acc_t>
MSMIX_HOST_DEVICE WeightBounds<scalar_t, acc_t> weight_bounds(const scalar_t* row, int64_t batch) {
  acc_t lo = magnitude(static_cast<acc_t>(row[0])), hi = lo;
  for (int64_t b = 1; b < batch; ++b) {
    const acc_t a = magnitude(static_cast<acc_t>(row[b]));
    lo = a < lo ? a : lo;
    hi = a > hi ? a : hi;
  }
  return {lo, weight_range<scalar_t>(lo, hi)};
}

// lam[m, k] of pair (i, j) from the modality's intensities `row` (design.md §5).
template <typename scalar_t, typename acc_t>
MSMIX_HOST_DEVICE acc_t pair_ratio(const scalar_t* row, int64_t i, int64_t j, acc_t lam0,
                                   const WeightBounds<scalar_t, acc_t>& bounds) {
  const acc_t w1 = intensity_weight<scalar_t>(magnitude(static_cast<acc_t>(row[i])), bounds.lo, bounds.range);
  const acc_t w2 = intensity_weight<scalar_t>(magnitude(static_cast<acc_t>(row[j])), bounds.lo, bounds.range);
  return modality_ratio<scalar_t>(lam0, w1, w2);
}

// The picked labels fused_mix returns with the ratios, as rows of row_bytes
// bytes: labels1[k] = labels[idx1[k]], labels2[k] = labels[idx2[k]].
struct PickedLabels {
  const unsigned char* labels;
  unsigned char *labels1, *labels2;
  int64_t row_bytes;
};

// Row k of labels1 and labels2, copied byte for byte as index_select copies.
MSMIX_HOST_DEVICE void copy_picked_labels(const PickedLabels& picked, const int64_t* idx1, const int64_t* idx2,
                                          int64_t k) {
  const unsigned char* row1 = picked.labels + idx1[k] * picked.row_bytes;
  const unsigned char* row2 = picked.labels + idx2[k] * picked.row_bytes;
  for (int64_t byte = 0; byte < picked.row_bytes; ++byte) {
    picked.labels1[k * picked.row_bytes + byte] = row1[byte];
    picked.labels2[k * picked.row_bytes + byte] = row2[byte];
  }
}

// d lam / d w1 and d lam / d w2 for an upstream gradient g of lam.
template <typename acc_t>
MSMIX_HOST_DEVICE void modality_ratio_backward(acc_t g, acc_t w1, acc_t w2, acc_t* g_w1, acc_t* g_w2) {
  const acc_t num = w1 + ratio_eps<acc_t>();
  const acc_t den = w1 + w2 + ratio_eps2<acc_t>();
  const acc_t g_den = -(g / acc_t(2)) * num / (den * den);
  *g_w1 = (g / acc_t(2)) / den + g_den;
  *g_w2 = g_den;
}

// |I| backward: sign(I), 0 at 0 (as torch's abs).
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t abs_grad_sign(acc_t x) {
  return x > acc_t(0) ? acc_t(1) : (x < acc_t(0) ? acc_t(-1) : acc_t(0));
}

// The gradient of one modality's intensities `row` [B]: lam[m, k] through the
// ratio formula, the min-max weights and |I|, differentiated as autograd does (a
// tie for the min or max shares its gradient evenly). grad_lam_row [K] is what
// reached lam[m] directly, grad_lam_label [K] what reached lam_label (= mean over
// the M modalities). `work` holds 3 * B accumulators. Serial and in a fixed order,
// so the CPU and the CUDA kernel give the same bits.
template <typename scalar_t, typename acc_t>
MSMIX_HOST_DEVICE void intensity_grad_row(const scalar_t* row, const scalar_t* grad_lam_row,
                                          const scalar_t* grad_lam_label, const int64_t* idx1,
                                          const int64_t* idx2, int64_t num_modalities, int64_t batch,
                                          int64_t num_mix, acc_t* work, scalar_t* grad_row) {
  acc_t* magnitudes = work;
  acc_t* weights = work + batch;
  acc_t* grad_weights = work + 2 * batch;
  acc_t lo = static_cast<acc_t>(row[0]) < acc_t(0) ? -static_cast<acc_t>(row[0]) : static_cast<acc_t>(row[0]);
  acc_t hi = lo;
  for (int64_t b = 0; b < batch; ++b) {
    const acc_t x = static_cast<acc_t>(row[b]);
    magnitudes[b] = x < acc_t(0) ? -x : x;
    lo = magnitudes[b] < lo ? magnitudes[b] : lo;
    hi = magnitudes[b] > hi ? magnitudes[b] : hi;
  }
  const acc_t range = weight_range<scalar_t>(lo, hi);
  for (int64_t b = 0; b < batch; ++b) {
    weights[b] = intensity_weight<scalar_t>(magnitudes[b], lo, range);
    grad_weights[b] = 0;
  }
  for (int64_t k = 0; k < num_mix; ++k) {
    const acc_t g = static_cast<acc_t>(grad_lam_row[k]) +
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
    grad_row[b] = static_cast<scalar_t>(g * abs_grad_sign(static_cast<acc_t>(row[b])));
  }
}

// grad_labels[b] += grad1[k] for idx1[k] == b, then grad2[k] for idx2[k] == b,
// in k order (the gradients of labels[idx1] and labels[idx2]).
template <typename scalar_t>
MSMIX_HOST_DEVICE void add_picked_label_grads(scalar_t* grad_labels, const scalar_t* grad1, const scalar_t* grad2,
                                              const int64_t* idx1, const int64_t* idx2, int64_t num_mix) {
  for (int64_t k = 0; k < num_mix; ++k) grad_labels[idx1[k]] += grad1[k];
  for (int64_t k = 0; k < num_mix; ++k) grad_labels[idx2[k]] += grad2[k];
}

}  // namespace msmix
