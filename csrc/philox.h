// Counter-based random numbers shared by the CPU and CUDA kernels.
//
// Every random draw of one msmix call is a pure function of (seed, stream,
// index, round), so the CPU and CUDA kernels produce the same pairs and
// ratios for the same seed, whatever their thread layout.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MSMIX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSMIX_HOST_DEVICE inline
#endif

namespace msmix {

// Independent streams of one call: each purpose draws from its own stream.
enum RandomStream : uint32_t {
  kStreamValidPairKey = 0,   // priority keys of valid pairs (SASS step 5)
  kStreamFallbackKey = 1,    // priority keys of fallback candidates (step 6)
  kStreamFallbackExtra = 2,  // draws with replacement when |C| < K (step 6)
  kStreamGammaX = 3,         // lam0 = X / (X + Y), X ~ Gamma(alpha)
  kStreamGammaY = 4,         //                     Y ~ Gamma(alpha)
};

struct Philox4x32 {
  uint32_t v[4];
};

// The multipliers and key increments of Philox4x32 (also read by the CPU's
// AVX2 rounds, cpu/row_loops.h).
constexpr uint32_t kPhiloxMul0 = 0xD2511F53u, kPhiloxMul1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u, kPhiloxWeyl1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
// 3", SC'11): 10 rounds of the bijection keyed by the 64-bit seed.
MSMIX_HOST_DEVICE Philox4x32 philox4x32_10(uint64_t seed, uint64_t index,
                                           uint32_t stream, uint32_t round) {
  uint32_t c0 = static_cast<uint32_t>(index);
  uint32_t c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = stream, c3 = round;
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxMul1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxWeyl0;
    k1 += kPhiloxWeyl1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// 64 random bits; used as a priority key (smallest keys win).
MSMIX_HOST_DEVICE uint64_t random_u64(uint64_t seed, uint64_t index, uint32_t stream) {
  const Philox4x32 r = philox4x32_10(seed, index, stream, 0);
  return static_cast<uint64_t>(r.v[0]) | (static_cast<uint64_t>(r.v[1]) << 32);
}

// Uniform double in [0, 1) from 53 random bits.
MSMIX_HOST_DEVICE double bits_to_unit(uint32_t lo, uint32_t hi) {
  const uint64_t bits = (static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32)) >> 11;
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

// log of a Gamma(alpha, 1) draw, Marsaglia & Tsang (2000). For alpha < 1 it
// uses Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha), kept in log space so
// that tiny alphas do not underflow to 0/0 in the Beta ratio.
MSMIX_HOST_DEVICE double log_gamma_sample(double alpha, uint64_t seed, uint64_t index,
                                          uint32_t stream) {
  const double boost_log_u = [&] {
    if (alpha >= 1.0) return 0.0;
    const Philox4x32 r = philox4x32_10(seed, index, stream, 0xFFFFFFFFu);
    // 1 - u lies in (0, 1], so the log is finite.
    return log(1.0 - bits_to_unit(r.v[0], r.v[1])) / alpha;
  }();
  const double a = alpha >= 1.0 ? alpha : alpha + 1.0;
  const double d = a - 1.0 / 3.0;
  const double c = 1.0 / sqrt(9.0 * d);
  // Acceptance is above 95% per round; 64 rounds failing has probability
  // below 1e-80, after which the mode d is returned.
  for (uint32_t round = 0; round < 64; ++round) {
    const Philox4x32 r = philox4x32_10(seed, index, stream, round);
    const double u1 = 1.0 - bits_to_unit(r.v[0], r.v[1]);  // (0, 1]
    const double u2 = bits_to_unit(r.v[2], r.v[3]);
    // Box-Muller normal; the acceptance uniform reuses the angle's bits
    // through a second, independent Philox block.
    const double normal = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
    const double v = 1.0 + c * normal;
    if (v <= 0.0) continue;
    const double v3 = v * v * v;
    const Philox4x32 s = philox4x32_10(seed, index, stream + 16u, round);
    const double u = 1.0 - bits_to_unit(s.v[0], s.v[1]);  // (0, 1]
    if (log(u) < 0.5 * normal * normal + d - d * v3 + d * log(v3)) {
      return log(d * v3) + boost_log_u;
    }
  }
  return log(d) + boost_log_u;
}

// lam0 ~ Beta(alpha, alpha) as X / (X + Y) with X, Y ~ Gamma(alpha).
MSMIX_HOST_DEVICE double beta_sample(double alpha, uint64_t seed, uint64_t index) {
  const double log_x = log_gamma_sample(alpha, seed, index, kStreamGammaX);
  const double log_y = log_gamma_sample(alpha, seed, index, kStreamGammaY);
  return 1.0 / (1.0 + exp(log_y - log_x));
}

}  // namespace msmix
