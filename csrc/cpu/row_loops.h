// The inner loops of the CPU kernels, one row at a time, on raw pointers.
//
// Each function marked MSMIX_CPU_CLONES is compiled twice, for baseline x86-64
// and for AVX2, and the loader picks the version the CPU runs
// (an ifunc, as ATen dispatches its own kernels to AVX2 at run time); the
// extension itself is built for baseline x86-64. Both versions give the same
// bits: sums keep kLanes partial sums combined in a fixed order (never an
// order chosen by the vectoriser), and the build sets -ffp-contract=off so no
// a * b + c becomes an FMA. The lanes are also what makes the reductions fast:
// one running sum is a chain of dependent adds.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define MSMIX_AVX2_PAIR_KEYS 1
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../mix_math.h"
#include "../sass_math.h"

// target_clones needs the loader's ifunc support: glibc (not musl, macOS or Windows).
// "avx2" rather than "arch=x86-64-v3", which GCC before 12 and older Clang reject; FMA
// would not be used anyway (no contraction) and AVX2 is what the loops need.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__GLIBC__)
#define MSMIX_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MSMIX_CPU_CLONES
#endif

#if defined(__GNUC__)
#define MSMIX_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define MSMIX_ALWAYS_INLINE inline
#endif

namespace msmix {
namespace {

constexpr int64_t kLanes = 32;

// term(c) over c < n reduced with `combine` from 0 (the identity of a sum, and
// of a max of magnitudes): lane l combines the terms c = l (mod kLanes) in
// order, then the lanes combine pairwise.
template <typename acc_t, typename Combine, typename Term>
MSMIX_ALWAYS_INLINE acc_t lane_reduce(int64_t n, Combine combine, Term term) {
  // The first chunk is combined into 0 as it is loaded: zeroing the array first
  // compiles to a rep stos that the next stores to it wait for (similarity of
  // 3 x [64, 127..128] rows on the normalising path: 90 -> 86 us).
  acc_t lanes[kLanes];
  int64_t c = 0;
  if (n >= kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = combine(acc_t(0), term(l));
    c = kLanes;
  } else {
    std::fill(lanes, lanes + kLanes, acc_t(0));
  }
  for (; c + kLanes <= n; c += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = combine(lanes[l], term(c + l));
  }
  for (int64_t l = 0; c + l < n; ++l) lanes[l] = combine(lanes[l], term(c + l));
  for (int64_t half = kLanes / 2; half > 0; half /= 2) {
#pragma omp simd
    for (int64_t l = 0; l < half; ++l) lanes[l] = combine(lanes[l], lanes[l + half]);
  }
  return lanes[0];
}

template <typename acc_t, typename Term>
MSMIX_ALWAYS_INLINE acc_t lane_sum(int64_t n, Term term) {
  return lane_reduce<acc_t>(n, [](acc_t a, acc_t b) { return a + b; }, term);
}

// Writes x / ||x|| (sass_math.h's formula) to out; false if x holds a NaN or Inf.
template <typename scalar_t, typename acc_t>
MSMIX_CPU_CLONES bool normalise_row(const scalar_t* x, acc_t* out, int64_t width) {
  // Exact in any order; a NaN may or may not survive the max, the sum of squares keeps it.
  const acc_t max_abs = lane_reduce<acc_t>(
      width, [](acc_t a, acc_t b) { return std::max(a, b); },
      [&](int64_t c) { return std::abs(static_cast<acc_t>(x[c])); });
  const acc_t inv_max = inverse_magnitude(max_abs);
  const acc_t sum_sq = lane_sum<acc_t>(width, [&](int64_t c) {
    const acc_t v = static_cast<acc_t>(x[c]) * inv_max;
    return v * v;
  });
  // An Inf makes max_abs Inf; a NaN makes sum_sq NaN (whatever max made of it).
  if (!std::isfinite(max_abs) || !std::isfinite(sum_sq)) return false;
  const acc_t inv_norm = inverse_row_norm(max_abs, sum_sq);
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) out[c] = static_cast<acc_t>(x[c]) * inv_norm;
  return true;
}

// out_c = mix_value(ratio, x1_c, x2_c), rounded once to scalar_t.
template <typename scalar_t, typename acc_t>
MSMIX_CPU_CLONES void mix_row(const scalar_t* x1, const scalar_t* x2, acc_t ratio, scalar_t* out, int64_t width) {
#pragma omp simd
  for (int64_t c = 0; c < width; ++c)
    out[c] = static_cast<scalar_t>(mix_value(ratio, static_cast<acc_t>(x1[c]), static_cast<acc_t>(x2[c])));
}

// Gram products of rows. dot(a, b) keeps kDotLanes partial sums (one AVX2
// register): lane l sums a_k * b_k over k = l (mod kDotLanes) in order of k,
// then the lanes combine pairwise. A product gets the same bits whichever
// block computes it, whichever thread runs that block and however k is cut
// into chunks of whole lane groups, unlike a BLAS GEMM, whose split of the
// rows among threads changes its last bits.
template <typename acc_t>
constexpr int64_t kDotLanes = 32 / static_cast<int64_t>(sizeof(acc_t));

// One chunk [begin, end) of k (begin a multiple of kDotLanes; only the last
// chunk has a partial lane group). Between chunks the lanes of product (i, j)
// wait in lanes[(i * B + j) * kDotLanes, + kDotLanes).
template <typename acc_t>
struct DotChunk {
  int64_t begin, end;
  bool first, last;
  acc_t* lanes;  // [B, B, kDotLanes]; unused when k is one chunk
};

// acc[r][c][l] += a[r][l] * b[c][l] for the L lanes of one group of k.
template <int R, int C, int64_t L, typename acc_t>
MSMIX_ALWAYS_INLINE void dot_lane_group(acc_t (&acc)[R][C][L], const acc_t* a, int64_t a_stride, const acc_t* b,
                                        int64_t b_stride) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) acc[r][c][l] += a[r * a_stride + l] * b[c * b_stride + l];
    }
  }
}

// out[c] = the lanes of acc[c] combined pairwise: lane l + lane l + L / 2 for
// l < L / 2, then the same over the first L / 2 lanes, down to one.
template <int C, int64_t L, typename acc_t>
MSMIX_ALWAYS_INLINE void combine_lanes(acc_t (&acc)[C][L], acc_t* out) {
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
#pragma GCC unroll 4
    for (int64_t half = L / 2; half > 0; half /= 2)
#pragma GCC unroll 4
      for (int64_t l = 0; l < half; ++l) acc[c][l] += acc[c][l + half];
    out[c] = acc[c][0];
  }
}

#if defined(__SSE2__)
// The same for four products, in SSE registers: the loop above compiles to
// scalar loads and adds through the stack, which took a sixth of the Gram
// products of 3 x [64, 128] rows (14 -> 11.8 us each, one thread).
MSMIX_ALWAYS_INLINE void combine_lanes(float (&acc)[4][8], float* out) {
  __m128 half[4];  // lanes l + (l + 4)
  for (int c = 0; c < 4; ++c) half[c] = _mm_add_ps(_mm_loadu_ps(acc[c]), _mm_loadu_ps(acc[c] + 4));
  // [h0_0 + h0_2, h0_1 + h0_3, h1_0 + h1_2, h1_1 + h1_3], and for products 2, 3
  const __m128 quarter01 = _mm_add_ps(_mm_movelh_ps(half[0], half[1]), _mm_movehl_ps(half[1], half[0]));
  const __m128 quarter23 = _mm_add_ps(_mm_movelh_ps(half[2], half[3]), _mm_movehl_ps(half[3], half[2]));
  const __m128 even = _mm_shuffle_ps(quarter01, quarter23, _MM_SHUFFLE(2, 0, 2, 0));
  const __m128 odd = _mm_shuffle_ps(quarter01, quarter23, _MM_SHUFFLE(3, 1, 3, 1));
  _mm_storeu_ps(out, _mm_add_ps(even, odd));
}

MSMIX_ALWAYS_INLINE void combine_lanes(double (&acc)[4][4], double* out) {
  for (int c = 0; c < 4; c += 2) {
    const __m128d half0 = _mm_add_pd(_mm_loadu_pd(acc[c]), _mm_loadu_pd(acc[c] + 2));
    const __m128d half1 = _mm_add_pd(_mm_loadu_pd(acc[c + 1]), _mm_loadu_pd(acc[c + 1] + 2));
    _mm_storeu_pd(out + c, _mm_add_pd(_mm_unpacklo_pd(half0, half1), _mm_unpackhi_pd(half0, half1)));
  }
}
#endif

// The products of rows [i, i + R) with rows [j, j + C) of x [B, width] over
// one k chunk; after the last chunk they go to gram [B, B] at (i + r, j + c).
// R * C lane registers, each load of x used R or C times. Every index into
// acc is a constant, so that it lives in registers: the tail is a zero-padded
// lane group (adding +0 leaves a lane as it was, and a lane is never -0).
template <bool kChunked, int R, int C, typename acc_t>
MSMIX_ALWAYS_INLINE void dot_block(const acc_t* x, int64_t batch, int64_t width, int64_t i, int64_t j,
                                   const DotChunk<acc_t>& chunk, acc_t* gram) {
  constexpr int64_t L = kDotLanes<acc_t>;
  const acc_t* a = x + i * width;
  const acc_t* b = x + j * width;
  acc_t* lanes = kChunked ? chunk.lanes + (i * batch + j) * L : nullptr;  // lane l of (r, c): + (r * B + c) * L + l
  acc_t acc[R][C][L];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
      for (int64_t l = 0; l < L; ++l)
        acc[r][c][l] = !kChunked || chunk.first ? acc_t(0) : lanes[(r * batch + c) * L + l];
  int64_t k = chunk.begin;
  for (; k + L <= chunk.end; k += L) dot_lane_group(acc, a + k, width, b + k, width);
  if (k < chunk.end) {
    acc_t a_tail[R][L] = {}, b_tail[C][L] = {};
    for (int64_t l = 0; k + l < chunk.end; ++l) {
      for (int r = 0; r < R; ++r) a_tail[r][l] = a[r * width + k + l];
      for (int c = 0; c < C; ++c) b_tail[c][l] = b[c * width + k + l];
    }
    dot_lane_group(acc, &a_tail[0][0], L, &b_tail[0][0], L);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    if (kChunked && !chunk.last) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
        for (int64_t l = 0; l < L; ++l) lanes[(r * batch + c) * L + l] = acc[r][c][l];
    } else {
      combine_lanes(acc[r], gram + (i + r) * batch + j);
    }
  }
}

// Rows [i, i + R) against the rows j >= i, four columns at a time.
template <bool kChunked, int R, typename acc_t>
MSMIX_ALWAYS_INLINE void dot_rows(const acc_t* x, int64_t batch, int64_t width, int64_t i,
                                  const DotChunk<acc_t>& chunk, acc_t* gram) {
  int64_t j = i;
  for (; j + 4 <= batch; j += 4) dot_block<kChunked, R, 4>(x, batch, width, i, j, chunk, gram);
  for (; j < batch; ++j) dot_block<kChunked, R, 1>(x, batch, width, i, j, chunk, gram);
}

// One k chunk of row i of x [B, width] (and of row i + 1 when two_rows)
// against rows j >= i; after the last chunk the products are in the same
// entries of gram [B, B] ((i + 1, i) below the diagonal too, with two rows).
// kChunked: k comes in more than one chunk. (Only always-inline calls below:
// a lambda would be compiled for the baseline target alone.)
template <bool kChunked, typename acc_t>
MSMIX_CPU_CLONES void gram_rows_upper(const acc_t* x, int64_t batch, int64_t width, int64_t i, bool two_rows,
                                      DotChunk<acc_t> chunk, acc_t* gram) {
  if (two_rows) {
    dot_rows<kChunked, 2>(x, batch, width, i, chunk, gram);
  } else {
    dot_rows<kChunked, 1>(x, batch, width, i, chunk, gram);
  }
}

// One modality's term of M * S along a row of the upper triangle (design.md
// §4.2): term_c = g_c * r_i * r_c, written (first modality) or added to s_c.
template <typename acc_t>
MSMIX_CPU_CLONES void add_scaled_gram_row(const acc_t* g, acc_t r_i, const acc_t* r, acc_t* s, int64_t n,
                                          bool first) {
  if (first) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) s[c] = g[c] * r_i * r[c];
  } else {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) s[c] += g[c] * r_i * r[c];
  }
}

// A gradient row: `width` contiguous values, or one value repeated along the
// row (kBroadcast: the column stride 0 of .sum()'s gradient).
template <bool kBroadcast>
MSMIX_ALWAYS_INLINE int64_t grad_col(int64_t c) { return kBroadcast ? 0 : c; }

// The gradient of source row b: its gradient row g_b plus, for each entry e
// that reads row b (ascending), weight_e times the gradient row of mixed row
// k_e, which starts at mixed + k_e * row_stride; summed in that order in acc_t.
// acc is scratch of `width`. A broadcast row is one value: summed once, then
// filled (the same operations in the same order as for each element).
template <typename scalar_t, typename ratio_t, typename acc_t, bool kBroadcast>
MSMIX_CPU_CLONES void source_row_grad(const scalar_t* g, const scalar_t* mixed, int64_t row_stride,
                                      const int64_t* entries, int64_t num_entries, const ratio_t* ratio, acc_t* acc,
                                      scalar_t* out, int64_t width) {
  if constexpr (kBroadcast) {
    acc_t sum = static_cast<acc_t>(g[0]);
    for (int64_t e = 0; e < num_entries; ++e) {
      const int64_t entry = entries[e];
      const acc_t weight = source_weight(static_cast<acc_t>(ratio[entry_mix_index(entry)]), entry_is_second(entry));
      sum += weight * static_cast<acc_t>(mixed[entry_mix_index(entry) * row_stride]);
    }
    std::fill(out, out + width, static_cast<scalar_t>(sum));
    return;
  }
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) acc[c] = static_cast<acc_t>(g[grad_col<kBroadcast>(c)]);
  for (int64_t e = 0; e < num_entries; ++e) {
    const int64_t entry = entries[e];
    const int64_t k = entry_mix_index(entry);
    const acc_t weight = source_weight(static_cast<acc_t>(ratio[k]), entry_is_second(entry));
    const scalar_t* gk = mixed + k * row_stride;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) acc[c] += weight * static_cast<acc_t>(gk[grad_col<kBroadcast>(c)]);
  }
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) out[c] = static_cast<scalar_t>(acc[c]);
}

// < g, x1 - x2 >, the gradient of a mixed row's ratio.
template <typename scalar_t, typename acc_t, bool kBroadcast>
MSMIX_CPU_CLONES acc_t ratio_row_grad(const scalar_t* g, const scalar_t* x1, const scalar_t* x2, int64_t width) {
  return lane_sum<acc_t>(width, [&](int64_t c) {
    return static_cast<acc_t>(g[grad_col<kBroadcast>(c)]) * (static_cast<acc_t>(x1[c]) - static_cast<acc_t>(x2[c]));
  });
}

// Priority keys of SASS pairs (sass_math.h valid_pair_key): Philox block n
// gives the keys of pairs 2n and 2n + 1.
#ifdef MSMIX_AVX2_PAIR_KEYS
// Keys of pairs [2 b, 2 b + 8 n) from blocks b .. b + 4n - 1, four blocks per
// AVX2 register: each 32-bit word of philox4x32_10's state sits zero-extended
// in a 64-bit lane, where _mm256_mul_epu32 is its 32 x 32 -> 64-bit multiply.
// The same bits as the scalar rounds (test_draws.py recomputes the draw from a
// Python Philox); the keys were ~80% of the pair draw, and sass_select of
// 3 x [64, 128] less its similarity went 37 -> 25 us (one thread).
__attribute__((target("avx2"))) inline void valid_pair_keys_avx2(uint64_t seed, uint64_t first_block,
                                                                 int64_t num_groups, uint64_t* keys) {
  const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFFll);
  const __m256i mul0 = _mm256_set1_epi64x(kPhiloxMul0), mul1 = _mm256_set1_epi64x(kPhiloxMul1);
  for (int64_t g = 0; g < num_groups; ++g) {
    const __m256i index = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(first_block + 4 * g)),
                                           _mm256_set_epi64x(3, 2, 1, 0));
    __m256i c0 = _mm256_and_si256(index, low32), c1 = _mm256_srli_epi64(index, 32);
    __m256i c2 = _mm256_set1_epi64x(kStreamValidPairKey), c3 = _mm256_setzero_si256();
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < kPhiloxRounds; ++r) {
      const __m256i p0 = _mm256_mul_epu32(c0, mul0), p1 = _mm256_mul_epu32(c2, mul1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1), _mm256_set1_epi64x(k0));
      c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3), _mm256_set1_epi64x(k1));
      c1 = _mm256_and_si256(p1, low32);
      c3 = _mm256_and_si256(p0, low32);
      k0 += kPhiloxWeyl0;
      k1 += kPhiloxWeyl1;
    }
    const __m256i even = _mm256_or_si256(c0, _mm256_slli_epi64(c1, 32));  // keys of pairs 2n
    const __m256i odd = _mm256_or_si256(c2, _mm256_slli_epi64(c3, 32));   // keys of pairs 2n + 1
    // [e0, o0, e2, o2] and [e1, o1, e3, o3], then in order
    const __m256i low = _mm256_unpacklo_epi64(even, odd), high = _mm256_unpackhi_epi64(even, odd);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + 8 * g), _mm256_permute2x128_si256(low, high, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + 8 * g + 4), _mm256_permute2x128_si256(low, high, 0x31));
  }
}

inline bool cpu_has_avx2() {
  static const bool has_avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has_avx2;
}
#endif

// The keys of pairs [first, first + count).
inline void fill_valid_pair_keys(uint64_t seed, int64_t first, int64_t count, uint64_t* keys) {
  int64_t j = 0;
  if (count > 0 && (first & 1) != 0) keys[j++] = valid_pair_key(seed, first);
#ifdef MSMIX_AVX2_PAIR_KEYS
  if (cpu_has_avx2()) {
    const int64_t num_groups = (count - j) / 8;
    valid_pair_keys_avx2(seed, static_cast<uint64_t>(first + j) >> 1, num_groups, keys + j);
    j += 8 * num_groups;
  }
#endif
  for (; j + 1 < count; j += 2) {
    const Philox4x32 block = valid_pair_block(seed, first + j);
    keys[j] = valid_pair_key_of_block(block, first + j);
    keys[j + 1] = valid_pair_key_of_block(block, first + j + 1);
  }
  if (j < count) keys[j] = valid_pair_key(seed, first + j);
}

}  // namespace
}  // namespace msmix
