// The SASS pair draw of one thread block (design.md §4.3-4.6): the bounds of
// S's off-diagonal, the valid pairs, the K smallest (key, flat) of them by
// radix selection, the fallback, and lam0 (for fused_mix also the mixing
// ratios and the picked labels), in one launch. For small batches it
// replaces the grid of kernels and the three sorts of B^2 keys of the CUDA
// path in csrc/cuda/sass_kernel.cu (which larger batches still take).
//
// It is plain C++ over a block executor (block_sort.h), so that a CPU test
// (csrc/tests/test_block_kernels.cpp) runs this very code one thread after
// another and checks its draw against the CPU operators, bit for bit. State
// that every thread reads lives in DrawShared (shared memory on a GPU).
#pragma once

#include <cstdint>
#include <limits>

#include "../ratio_math.h"
#include "../sass_math.h"
#include "block_sort.h"

namespace msmix {
namespace block {

constexpr int kMaxThreads = 512;    // the per-thread bounds of S live in DrawShared
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kBinGroups = 16;      // the bin search sums 16 groups of 16 bins first
constexpr int kKeyDigits = 64 / kRadixBits;

template <typename acc_t>
struct DrawShared {
  acc_t thread_lo[kMaxThreads], thread_hi[kMaxThreads];
  acc_t lo, hi;                     // bounds of the off-diagonal of S (NaN left out)
  uint32_t bins[kRadixBins];
  uint32_t group_sums[kBinGroups];
  uint32_t fill;                    // slots taken by atomic_inc
  int64_t num_valid;
  // Radix selection: the decided top bits of (key, flat) and how many items
  // that match them are still to be taken.
  uint64_t key_prefix, key_mask, flat_prefix, flat_mask;
  int64_t remaining;
  bool done;
};

// Scratch in global memory: `items` holds every ordered pair of the batch;
// `ranked` and `chosen` hold list_capacity(K, B) items each.
struct DrawScratch {
  KeyedList items, ranked, chosen;
};

// The sorted lists' length: a power of two >= max(K, C).
MSMIX_HOST_DEVICE int64_t list_capacity(int64_t num_mix, int64_t batch) {
  const int64_t candidates = fallback_candidates(num_mix, batch);
  return sort_capacity(num_mix > candidates ? num_mix : candidates);
}

// fused_mix's ratios (design.md §5) and picked labels, made by the drawing
// block right after the pairs: mix_ratios_cuda's computation, for intensities
// in the features' accumulate dtype. lam == nullptr: not asked for.
template <typename acc_t>
struct RatioArgs {
  const acc_t* intensities;  // [M, B]
  int64_t num_modalities;
  acc_t* bounds;             // [M, 2] scratch: lo and range of each modality's weights
  acc_t *lam, *lam_label;    // [M, K], [K]
  PickedLabels labels;
};

template <typename acc_t>
struct DrawArgs {
  acc_t* partial;          // [splits, B, B] Gram sums; split 0 is overwritten with S
  int64_t splits;
  acc_t num_modalities;    // S = (sum of the splits, in split order) / M
  int64_t batch, num_mix;
  acc_t threshold;
  uint64_t seed;
  double alpha;
  DrawScratch scratch;
  int64_t *idx1, *idx2;    // [K]
  acc_t* lam0;             // [K]
  RatioArgs<acc_t> ratios;
};

// Digits of the radix selection: the 8 bytes of the key from the top, then
// the bytes of the flat index that any flat below `size_bound` can have.
MSMIX_HOST_DEVICE int flat_digits(int64_t size_bound) {
  int digits = 1;
  while (digits < 8 && (static_cast<uint64_t>(size_bound - 1) >> (kRadixBits * digits)) != 0) ++digits;
  return digits;
}

MSMIX_HOST_DEVICE uint32_t radix_digit(uint64_t key, int64_t flat, int pass, int num_flat_digits) {
  return pass < kKeyDigits
             ? static_cast<uint32_t>(key >> (64 - kRadixBits * (pass + 1))) & (kRadixBins - 1)
             : static_cast<uint32_t>(static_cast<uint64_t>(flat) >>
                                     (kRadixBits * (num_flat_digits - 1 - (pass - kKeyDigits)))) &
                   (kRadixBins - 1);
}

template <typename acc_t>
MSMIX_HOST_DEVICE bool matches_prefix(const DrawShared<acc_t>& sh, uint64_t key, int64_t flat) {
  return (key & sh.key_mask) == sh.key_prefix && (static_cast<uint64_t>(flat) & sh.flat_mask) == sh.flat_prefix;
}

// (key, flat) restricted to the decided bits is at most the prefix: selected.
template <typename acc_t>
MSMIX_HOST_DEVICE bool within_prefix(const DrawShared<acc_t>& sh, uint64_t key, int64_t flat) {
  const uint64_t k = key & sh.key_mask;
  return k < sh.key_prefix || (k == sh.key_prefix && (static_cast<uint64_t>(flat) & sh.flat_mask) <= sh.flat_prefix);
}

// The `count` smallest (key, flat) of in[0, size) (1 <= count <= size, flat
// indices unique and below `flat_bound`), ascending, into out[0, count).
// Radix selection finds the bits that the count-th smallest item begins with,
// one byte per pass, until every item that begins with them is taken; most
// draws stop after two or three passes. Then the selected items are gathered
// (in any order) and sorted. `out` holds sort_capacity(count) items.
template <typename acc_t, typename Exec>
MSMIX_BLOCK_FN void select_smallest(Exec& exec, DrawShared<acc_t>& sh, KeyedList in, int64_t size,
                                    int64_t count, int64_t flat_bound, KeyedList out) {
  const int threads = exec.threads();
  const int num_flat_digits = flat_digits(flat_bound);
  exec.single([&] {
    sh.key_prefix = sh.key_mask = sh.flat_prefix = sh.flat_mask = 0;
    sh.remaining = count;
    sh.done = count == size;  // everything is taken
    sh.fill = 0;
  });
  for (int pass = 0; pass < kKeyDigits + num_flat_digits && !sh.done; ++pass) {
    exec.each([&](int tid) {
      for (int b = tid; b < kRadixBins; b += threads) sh.bins[b] = 0;
    });
    exec.each([&](int tid) {
      for (int64_t i = tid; i < size; i += threads)
        if (matches_prefix(sh, in.key[i], in.flat[i]))
          Exec::atomic_inc(&sh.bins[radix_digit(in.key[i], in.flat[i], pass, num_flat_digits)]);
    });
    exec.each([&](int tid) {
      for (int g = tid; g < kBinGroups; g += threads) {
        uint32_t sum = 0;
        for (int b = 0; b < kRadixBins / kBinGroups; ++b) sum += sh.bins[g * (kRadixBins / kBinGroups) + b];
        sh.group_sums[g] = sum;
      }
    });
    exec.single([&] {
      // The bin of the remaining-th smallest matching item: everything in the
      // bins before it is taken.
      int64_t before = 0;
      int group = 0;
      while (before + sh.group_sums[group] < sh.remaining) before += sh.group_sums[group++];
      int bin = group * (kRadixBins / kBinGroups);
      while (before + sh.bins[bin] < sh.remaining) before += sh.bins[bin++];
      sh.remaining -= before;
      const uint64_t digit = static_cast<uint64_t>(bin);
      if (pass < kKeyDigits) {
        const int shift = 64 - kRadixBits * (pass + 1);
        sh.key_prefix |= digit << shift;
        sh.key_mask |= static_cast<uint64_t>(kRadixBins - 1) << shift;
      } else {
        const int shift = kRadixBits * (num_flat_digits - 1 - (pass - kKeyDigits));
        sh.flat_prefix |= digit << shift;
        sh.flat_mask |= static_cast<uint64_t>(kRadixBins - 1) << shift;
      }
      sh.done = sh.bins[bin] == sh.remaining;
    });
  }
  exec.each([&](int tid) {
    for (int64_t i = tid; i < size; i += threads) {
      if (!within_prefix(sh, in.key[i], in.flat[i])) continue;
      const uint32_t slot = Exec::atomic_inc(&sh.fill);
      out.key[slot] = in.key[i];
      out.flat[slot] = in.flat[i];
    }
  });
  const int64_t padded = sort_capacity(count);
  exec.each([&](int tid) {
    for (int64_t i = count + tid; i < padded; i += threads) {
      out.key[i] = std::numeric_limits<uint64_t>::max();
      out.flat[i] = std::numeric_limits<int64_t>::max();
    }
  });
  bitonic_sort(exec, out, padded);
}

// S = (sum of the splits) / M over split 0 of `partial` (as the grid's
// similarity_reduce_kernel computes it) and its bounds into sh.lo, sh.hi.
template <typename acc_t, typename Exec>
MSMIX_BLOCK_FN void similarity_bounds(Exec& exec, DrawShared<acc_t>& sh, const DrawArgs<acc_t>& args) {
  const int threads = exec.threads();
  const int64_t batch = args.batch, n = batch * batch;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  exec.each([&](int tid) {
    acc_t lo = kInf, hi = -kInf;
    for (int64_t flat = tid; flat < n; flat += threads) {
      const acc_t v = summed_similarity(args.partial, args.splits, n, flat, args.num_modalities);
      args.partial[flat] = v;
      // NaN (non-finite features on CUDA) never wins a comparison: left out.
      if (pair_row(flat, batch) != pair_col(flat, batch)) {
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
    }
    sh.thread_lo[tid] = lo;
    sh.thread_hi[tid] = hi;
  });
  // Min and max are exact, so the order of this reduction cannot show. Thread
  // t < 32 folds the entries t + 32 m into entry t, then one thread the 32.
  constexpr int kFold = 32;
  exec.each([&](int tid) {
    if (tid >= kFold) return;
    for (int t = tid + kFold; t < threads; t += kFold) {
      sh.thread_lo[tid] = sh.thread_lo[t] < sh.thread_lo[tid] ? sh.thread_lo[t] : sh.thread_lo[tid];
      sh.thread_hi[tid] = sh.thread_hi[t] > sh.thread_hi[tid] ? sh.thread_hi[t] : sh.thread_hi[tid];
    }
  });
  exec.single([&] {
    acc_t lo = kInf, hi = -kInf;
    for (int t = 0; t < kFold && t < threads; ++t) {
      lo = sh.thread_lo[t] < lo ? sh.thread_lo[t] : lo;
      hi = sh.thread_hi[t] > hi ? sh.thread_hi[t] : hi;
    }
    sh.lo = lo;
    sh.hi = hi;
  });
}

// S' of pair `flat` (design.md §4.3).
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t pair_similarity(const DrawShared<acc_t>& sh, const acc_t* s, int64_t flat, int64_t batch) {
  return normalise_similarity<acc_t>(s[flat], sh.lo, sh.hi, pair_row(flat, batch) == pair_col(flat, batch));
}

// The whole draw: idx1, idx2 and lam0 of design.md §4.5-4.6 and §5 from the
// Gram sums, then the ratios if asked for. exec.threads() must be at most
// kMaxThreads.
template <typename acc_t, typename Exec>
MSMIX_BLOCK_FN void draw_pairs(Exec& exec, DrawShared<acc_t>& sh, const DrawArgs<acc_t>& args) {
  const int threads = exec.threads();
  const int64_t batch = args.batch, num_mix = args.num_mix, n = batch * batch;
  const acc_t* s = args.partial;
  const DrawScratch& scratch = args.scratch;
  similarity_bounds(exec, sh, args);

  // The valid pairs with their keys, gathered in any order.
  exec.single([&] { sh.fill = 0; });
  exec.each([&](int tid) {
    for (int64_t flat = tid; flat < n; flat += threads) {
      const acc_t similarity = pair_similarity(sh, s, flat, batch);
      if (pair_row(flat, batch) == pair_col(flat, batch) || !(similarity > args.threshold)) continue;
      const uint32_t slot = Exec::atomic_inc(&sh.fill);
      scratch.items.key[slot] = valid_pair_key(args.seed, flat);
      scratch.items.flat[slot] = flat;
    }
  });
  exec.single([&] { sh.num_valid = sh.fill; });
  const int64_t num_valid = sh.num_valid;

  int64_t num_candidates = 0;  // 0: the valid draw
  if (num_valid >= num_mix) {
    select_smallest(exec, sh, scratch.items, num_valid, num_mix, n, scratch.chosen);
  } else {
    // The fallback: the C pairs i < j of largest S' (ties by flat), ...
    const int64_t num_upper = batch * (batch - 1) / 2;
    num_candidates = fallback_candidates(num_mix, batch);
    exec.each([&](int tid) {
      for (int64_t flat = tid; flat < n; flat += threads) {
        const int64_t i = pair_row(flat, batch), j = pair_col(flat, batch);
        if (i >= j) continue;
        const int64_t slot = i * (2 * batch - i - 1) / 2 + (j - i - 1);  // row-major upper triangle
        scratch.items.key[slot] = descending_similarity_key(static_cast<double>(pair_similarity(sh, s, flat, batch)));
        scratch.items.flat[slot] = flat;
      }
    });
    select_smallest(exec, sh, scratch.items, num_upper, num_candidates, n, scratch.ranked);
    // ... then in (fallback key, flat) order.
    exec.each([&](int tid) {
      for (int64_t r = tid; r < num_candidates; r += threads) {
        scratch.items.key[r] = fallback_pair_key(args.seed, scratch.ranked.flat[r]);
        scratch.items.flat[r] = scratch.ranked.flat[r];
      }
    });
    select_smallest(exec, sh, scratch.items, num_candidates,
                    num_mix < num_candidates ? num_mix : num_candidates, n, scratch.chosen);
  }

  const RatioArgs<acc_t>& ratios = args.ratios;
  const bool with_ratios = ratios.lam != nullptr;
  if (with_ratios) {
    exec.each([&](int tid) {
      for (int64_t m = tid; m < ratios.num_modalities; m += threads) {
        const auto bounds = weight_bounds<acc_t, acc_t>(ratios.intensities + m * batch, batch);
        ratios.bounds[2 * m] = bounds.lo;
        ratios.bounds[2 * m + 1] = bounds.range;
      }
    });
  }
  exec.each([&](int tid) {
    for (int64_t k = tid; k < num_mix; k += threads) {
      // Past the C candidates (|C| < K): draws with replacement by S' rank.
      const int64_t flat =
          num_candidates == 0 || k < num_candidates
              ? scratch.chosen.flat[k]
              : scratch.ranked.flat[fallback_extra_rank(args.seed, k - num_candidates, num_candidates)];
      const int64_t i = pair_row(flat, batch), j = pair_col(flat, batch);
      const acc_t lam0 = static_cast<acc_t>(beta_sample(args.alpha, args.seed, static_cast<uint64_t>(k)));
      args.idx1[k] = i;
      args.idx2[k] = j;
      args.lam0[k] = lam0;
      if (!with_ratios) continue;
      acc_t sum = 0;  // lam.mean(0): summed over m in order, divided once
      for (int64_t m = 0; m < ratios.num_modalities; ++m) {
        const WeightBounds<acc_t, acc_t> bounds{ratios.bounds[2 * m], ratios.bounds[2 * m + 1]};
        const acc_t ratio = pair_ratio<acc_t>(ratios.intensities + m * batch, i, j, lam0, bounds);
        ratios.lam[m * num_mix + k] = ratio;
        sum += ratio;
      }
      ratios.lam_label[k] = sum / static_cast<acc_t>(ratios.num_modalities);
    }
  });
  if (with_ratios) {
    exec.each([&](int tid) {
      for (int64_t k = tid; k < num_mix; k += threads) copy_picked_labels(ratios.labels, args.idx1, args.idx2, k);
    });
  }
}

}  // namespace block
}  // namespace msmix
