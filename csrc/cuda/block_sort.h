// Block-wide building blocks of the one-block CUDA kernels (block_draw.h and
// the inverse index of mix_backward), written as plain C++ over an executor so
// that the CPU test csrc/tests/test_block_kernels.cpp runs the very same code
// one thread after another. An executor has
//   threads()           the threads of the block;
//   each(f)             f(tid) for every tid in [0, threads()), then a barrier;
//   single(f)           f() on one thread, then a barrier;
//   atomic_inc(p)       ++*p atomically (uint32_t), returning the old value.
// Inside one phase (one each/single) a thread may share data with the others
// only through atomic_inc; what a phase writes, the phases after it read.
#pragma once

#include <cstdint>
#include <limits>

#include "../mix_math.h"   // entry_is_second, entry_mix_index
#include "../sass_math.h"  // key_before

#if defined(__CUDACC__)
#define MSMIX_BLOCK_FN __device__
#else
#define MSMIX_BLOCK_FN inline
#endif

namespace msmix {
namespace block {

// Where the items of a selection go: keys and flat indices side by side.
struct KeyedList {
  uint64_t* key;
  int64_t* flat;
};

// The smallest power of two >= n (n >= 1): the capacity of a sorted list.
MSMIX_HOST_DEVICE int64_t sort_capacity(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Sorts list[0, n) by (key, flat) ascending in place: a bitonic network over
// n, a power of two; each compare-exchange belongs to one thread.
template <typename Exec>
MSMIX_BLOCK_FN void bitonic_sort(Exec& exec, KeyedList list, int64_t n) {
  const int threads = exec.threads();
  for (int64_t size = 2; size <= n; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      exec.each([&](int tid) {
        for (int64_t i = tid; i < n; i += threads) {
          const int64_t partner = i ^ stride;
          if (partner <= i) continue;
          const bool ascending = (i & size) == 0;
          const bool partner_first = key_before(list.key[partner], list.flat[partner], list.key[i], list.flat[i]);
          if (partner_first == ascending) {
            const uint64_t key = list.key[i];
            const int64_t flat = list.flat[i];
            list.key[i] = list.key[partner];
            list.flat[i] = list.flat[partner];
            list.key[partner] = key;
            list.flat[partner] = flat;
          }
        }
      });
    }
  }
}

// The inverse index of mix_backward (mix_math.h build_inverse_index) in one
// block: the 2K entries e ordered by (source row, e), that is, stably by row.
// rows and entries hold sort_capacity(2K) items; the first 2K come out as the
// sorted rows and their entries, the rest as padding.
template <typename Exec>
MSMIX_BLOCK_FN void sort_inverse_index(Exec& exec, const int64_t* idx1, const int64_t* idx2, int64_t num_mix,
                                       uint64_t* rows, int64_t* entries) {
  const int threads = exec.threads();
  const int64_t num_entries = 2 * num_mix, padded = sort_capacity(num_entries);
  exec.each([&](int tid) {
    for (int64_t e = tid; e < padded; e += threads) {
      const bool entry = e < num_entries;
      rows[e] = entry ? static_cast<uint64_t>(entry_is_second(e) ? idx2[entry_mix_index(e)] : idx1[entry_mix_index(e)])
                      : std::numeric_limits<uint64_t>::max();
      entries[e] = entry ? e : std::numeric_limits<int64_t>::max();
    }
  });
  bitonic_sort(exec, KeyedList{rows, entries}, padded);
}

}  // namespace block
}  // namespace msmix
