// Index math of the fused mixing op (design.md §6), shared by the CPU and CUDA
// kernels.
//
// Mixed row k reads two source rows: entry 2k (row i_k, weight r_k) and entry
// 2k + 1 (row j_k, weight 1 - r_k). The backward inverts this map: for each
// source row b, the entries that read it, in ascending entry order, so the
// gradient of a row is a gather with a fixed summation order.
#pragma once

#include <cstdint>
#include <vector>

#include "philox.h"  // MSMIX_HOST_DEVICE

namespace msmix {

template <typename acc_t>
MSMIX_HOST_DEVICE acc_t mix_value(acc_t ratio, acc_t first, acc_t second) {
  return ratio * first + (acc_t(1) - ratio) * second;
}

MSMIX_HOST_DEVICE int64_t entry_mix_index(int64_t entry) { return entry >> 1; }
MSMIX_HOST_DEVICE bool entry_is_second(int64_t entry) { return (entry & 1) != 0; }

// Weight of a source row in a mixed row: r for i_k, 1 - r for j_k.
template <typename acc_t>
MSMIX_HOST_DEVICE acc_t source_weight(acc_t ratio, bool second) {
  return second ? acc_t(1) - ratio : ratio;
}

// CSR form of the inverse map: entries[offsets[b] : offsets[b + 1]] read row b.
struct MixInverseIndex {
  std::vector<int64_t> offsets;  // [B + 1]
  std::vector<int64_t> entries;  // [2K]
};

// Counting sort by source row; entries keep their ascending order within a row.
// Indices must already be checked to lie in [0, batch).
inline MixInverseIndex build_inverse_index(const int64_t* idx1, const int64_t* idx2, int64_t batch,
                                           int64_t num_mix) {
  MixInverseIndex inverse{std::vector<int64_t>(batch + 1, 0), std::vector<int64_t>(2 * num_mix)};
  for (int64_t e = 0; e < 2 * num_mix; ++e) {
    const int64_t row = entry_is_second(e) ? idx2[entry_mix_index(e)] : idx1[entry_mix_index(e)];
    ++inverse.offsets[row + 1];
  }
  for (int64_t b = 0; b < batch; ++b) inverse.offsets[b + 1] += inverse.offsets[b];
  std::vector<int64_t> cursor(inverse.offsets.begin(), inverse.offsets.end() - 1);
  for (int64_t e = 0; e < 2 * num_mix; ++e) {
    const int64_t row = entry_is_second(e) ? idx2[entry_mix_index(e)] : idx1[entry_mix_index(e)];
    inverse.entries[cursor[row]++] = e;
  }
  return inverse;
}

}  // namespace msmix
