// Index math and random keys of SASS pair selection (design.md §4), shared
// by the CPU and CUDA kernels so that both select the same pairs.
//
// Uniform sampling of K items without replacement is done by priority keys:
// every candidate gets an independent 64-bit random key and the K smallest
// (key, flat index) win, in ascending key order. That is a uniformly random
// ordered K-subset, and its shape depends on K alone, never on how many
// pairs were valid, so no size ever has to leave the device.
#pragma once

#include <cmath>
#include <cstring>

#include "philox.h"

namespace msmix {

// Pairs (i, j) of a [B, B] matrix are addressed by their flat index i * B + j.
MSMIX_HOST_DEVICE int64_t pair_row(int64_t flat, int64_t batch) { return flat / batch; }
MSMIX_HOST_DEVICE int64_t pair_col(int64_t flat, int64_t batch) { return flat % batch; }

// Size of the fallback candidate set C: min(2K, B(B-1)/2).
MSMIX_HOST_DEVICE int64_t fallback_candidates(int64_t num_mix, int64_t batch) {
  const int64_t unordered = batch * (batch - 1) / 2;
  return 2 * num_mix < unordered ? 2 * num_mix : unordered;
}

// A Philox block has 128 bits: block n gives the keys of pairs 2n (its low 64
// bits) and 2n + 1 (its high 64 bits), so a row of keys costs half the blocks.
MSMIX_HOST_DEVICE uint64_t valid_pair_key_of_block(const Philox4x32& block, int64_t flat) {
  return (flat & 1) == 0 ? (static_cast<uint64_t>(block.v[0]) | (static_cast<uint64_t>(block.v[1]) << 32))
                         : (static_cast<uint64_t>(block.v[2]) | (static_cast<uint64_t>(block.v[3]) << 32));
}

MSMIX_HOST_DEVICE Philox4x32 valid_pair_block(uint64_t seed, int64_t flat) {
  return philox4x32_10(seed, static_cast<uint64_t>(flat) >> 1, kStreamValidPairKey, 0);
}

MSMIX_HOST_DEVICE uint64_t valid_pair_key(uint64_t seed, int64_t flat) {
  return valid_pair_key_of_block(valid_pair_block(seed, flat), flat);
}

MSMIX_HOST_DEVICE uint64_t fallback_pair_key(uint64_t seed, int64_t flat) {
  return random_u64(seed, static_cast<uint64_t>(flat), kStreamFallbackKey);
}

// Draw r (0 <= r < K - |C|) with replacement when |C| < K: a rank in
// [0, num_candidates) of the candidates ordered by S' descending.
MSMIX_HOST_DEVICE int64_t fallback_extra_rank(uint64_t seed, int64_t r, int64_t num_candidates) {
  const Philox4x32 bits = philox4x32_10(seed, static_cast<uint64_t>(r), kStreamFallbackExtra, 0);
  const int64_t rank = static_cast<int64_t>(bits_to_unit(bits.v[0], bits.v[1]) *
                                            static_cast<double>(num_candidates));
  return rank < num_candidates ? rank : num_candidates - 1;
}

// A key that orders similarities from largest to smallest (the fallback's
// order, design.md §4.6): -0 ties with +0, and NaN (non-finite features on
// CUDA) ranks after every number and before the all-ones key.
MSMIX_HOST_DEVICE uint64_t descending_similarity_key(double s) {
  if (s != s) return ~uint64_t{1};
  if (s == 0.0) s = 0.0;
#ifdef __CUDA_ARCH__
  const uint64_t bits = static_cast<uint64_t>(__double_as_longlong(s));
#else
  uint64_t bits;
  std::memcpy(&bits, &s, sizeof bits);
#endif
  const uint64_t ascending = (bits >> 63) != 0 ? ~bits : bits | (uint64_t{1} << 63);
  return ~ascending;
}

// Strict order of priority keys, ties broken by the smaller flat index.
MSMIX_HOST_DEVICE bool key_before(uint64_t key_a, int64_t flat_a, uint64_t key_b, int64_t flat_b) {
  return key_a < key_b || (key_a == key_b && flat_a < flat_b);
}

// Below this range of the off-diagonal S the batch counts as degenerate
// (design.md §4.3). S of unit rows carries a few ulps of rounding that differ
// between CPU models, thread counts and devices; in float32 that is ~1e-7, so
// 1e-8 would let rounding noise decide S' in {0, 1} for a batch whose samples
// all point the same way. 2^-16 is over 100 float32 ulps of 1.
template <typename acc_t>
MSMIX_HOST_DEVICE constexpr acc_t degenerate_similarity_range() {
  return sizeof(acc_t) >= 8 ? acc_t(1e-8) : acc_t(1.0 / 65536.0);
}

// S_ij from the CUDA Gram kernel's sums over column splits, partial
// [splits, B, B] (plane = B * B): the splits added in order, then / M.
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t summed_similarity(const acc_t* partial, int64_t splits, int64_t plane, int64_t flat,
                                          acc_t num_modalities) {
  acc_t v = partial[flat];
  for (int64_t split = 1; split < splits; ++split) v += partial[split * plane + flat];
  return v / num_modalities;
}

// Row normalisation (design.md §4.1), one formula on both devices: a row is
// scaled by the reciprocal of its largest magnitude before its squares are
// summed, so large fp16/bf16/fp32 values cannot overflow the sum, then by the
// reciprocal of its norm. Reciprocals, not a division per element (which
// dominated the CPU kernel's cost).
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t inverse_magnitude(acc_t max_abs) {
  return max_abs > acc_t(0) ? acc_t(1) / max_abs : acc_t(0);
}

// scaled_sum_sq: the sum of squares of the row times inverse_magnitude(max_abs).
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t inverse_row_norm(acc_t max_abs, acc_t scaled_sum_sq) {
#ifndef __CUDA_ARCH__
  using std::sqrt;
#endif
  const acc_t norm = max_abs * sqrt(scaled_sum_sq);
  return acc_t(1) / (norm > acc_t(1e-12) ? norm : acc_t(1e-12));
}

// Min-max normalisation of the off-diagonal similarities (design.md §4.3).
// NaN (a sample with non-finite features, CUDA only: the CPU rejects them)
// stays NaN, even when every other entry is NaN too.
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t normalise_similarity(acc_t s, acc_t lo, acc_t hi, bool diagonal) {
  if (diagonal) return acc_t(0);
  if (s != s) return s;
  const acc_t range = hi - lo;
  return range <= degenerate_similarity_range<acc_t>() ? acc_t(0.5) : (s - lo) / range;
}

}  // namespace msmix
