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

}  // namespace msmix
