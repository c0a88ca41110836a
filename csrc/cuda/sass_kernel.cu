// SASS on CUDA: normalised similarity S' (design.md §4.1-4.3) and the draw of K
// pairs plus their base ratios lam0 (design.md §4.4-4.6, 5). Same Philox keys,
// same (key, flat index) order and same fallback as csrc/cpu/sass_kernel.cpp,
// so both devices make the same draw from the same S' (S itself may differ in
// its last bits: the CPU and this kernel sum the products in different orders).
//
// Nothing is read back to the host: the number of valid pairs stays on the
// device, and output shapes depend on K alone, so a training step that calls
// sass_select can be captured in a CUDA graph.
//
// Two draws, with the same result:
// - Up to kBlockDrawMaxPairs ordered pairs (B <= 256) and K <= kBlockDrawMaxMix,
//   one block does the whole draw (block_draw.h: radix selection of the K
//   smallest keys, no sort of B^2 keys), right after the Gram kernel.
//   sass_select: 3 launches (row normalisation, Gram, draw) for M <= 8.
// - Larger batches: pair keys and fallback keys of all B^2 pairs, one at::sort
//   over both rows, a sort and a key kernel for the fallback candidates, and a
//   selection kernel; both the valid draw and the fallback are prepared and the
//   last kernel picks one. sass_select: 5 kernels + 3 sorts of rows over 65536
//   keys (a cub radix sort each, about a dozen launches).
// similarity: row normalisation, Gram, reduction, normalisation = 4 launches.
//
// S = Z Z^T is a hand-written Gram kernel rather than at::mm: its sums run in
// a fixed order (deterministic without CUBLAS_WORKSPACE_CONFIG, which at::mm
// demands under torch.use_deterministic_algorithms), it never uses TF32
// (which would move similarities near the threshold away from the CPU's), and
// it fills only the upper triangle of tiles, mirrored, so S is exactly
// symmetric.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../fused.h"
#include "../rows.h"
#include "../sass_math.h"
#include "block_draw.h"
#include "cuda_common.cuh"

namespace msmix {
namespace {

using gpu::block_reduce;
using gpu::ceil_div;
using gpu::kWarpSize;

constexpr int kThreads = 256;
constexpr int64_t kMaxGridBlocks = 1024;     // grid-stride kernels over the B*B pairs
constexpr int kGramTile = 64;                // Gram output tile: kGramTile x kGramTile
constexpr int kGramDepth = 16;               // columns of z staged per step
constexpr int kGramThreads = 256;            // 16 x 16 threads, 4 x 4 outputs each
constexpr int64_t kGramTargetBlocks = 512;   // split the columns up to about this many blocks
constexpr int64_t kGramMinColumns = 256;     // but give every split at least this many columns
constexpr int64_t kExcludedKey = std::numeric_limits<int64_t>::max();
constexpr int kMaxRowSources = 8;            // modalities normalised per launch
// The one-block draw: up to B = 256 and K = 65536 (a guess to be measured on
// a GPU: where one block's pass over the pairs stops beating a grid and sorts).
constexpr int kDrawThreads = block::kMaxThreads;
constexpr int64_t kBlockDrawMaxPairs = 65536;
constexpr int64_t kBlockDrawMaxMix = 65536;

int64_t grid_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreads), kMaxGridBlocks));
}

// The call's seed: read by the kernels from the device tensor (no sync), or
// read on the host from a CPU tensor (a plain memory read, no sync either).
struct SeedArg {
  const int64_t* device_ptr;
  int64_t host_value;
  __device__ __forceinline__ uint64_t get() const {
    return static_cast<uint64_t>(device_ptr != nullptr ? *device_ptr : host_value);
  }
};

SeedArg make_seed_arg(const at::Tensor& seed) {
  if (seed.is_cpu()) return SeedArg{nullptr, *seed.const_data_ptr<int64_t>()};
  return SeedArg{seed.const_data_ptr<int64_t>(), 0};
}

// A uint64 priority key as an int64 with the same order (sign bit flipped),
// so that at::sort on int64 orders by key; a stable sort of an array laid out
// in flat order then orders by (key, flat index), as the CPU does.
__device__ __forceinline__ int64_t ordered_key(uint64_t key) {
  return static_cast<int64_t>(key ^ (uint64_t{1} << 63));
}

// The min and max of the off-diagonal of S from the per-block bounds
// [count, 2] of similarity_reduce_kernel. Every thread of the block calls it.
template <typename acc_t>
__device__ void reduce_bounds(const acc_t* bounds, int64_t count, acc_t* shared, acc_t& lo,
                              acc_t& hi) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  lo = kInf;
  hi = -kInf;
  for (int64_t g = threadIdx.x; g < count; g += blockDim.x) {
    lo = gpu::MinOp<acc_t>()(lo, bounds[2 * g]);
    hi = gpu::MaxOp<acc_t>()(hi, bounds[2 * g + 1]);
  }
  lo = block_reduce(lo, gpu::MinOp<acc_t>(), kInf, shared);
  hi = block_reduce(hi, gpu::MaxOp<acc_t>(), -kInf, shared);
}

// Up to kMaxRowSources modalities of non-zero width: their rows and where
// they start in z.
template <typename scalar_t>
struct RowSources {
  const scalar_t* rows[kMaxRowSources];
  int64_t width[kMaxRowSources];
  int64_t column[kMaxRowSources];
};

// Block (b, m): row b of modality m divided by its largest magnitude, then by
// the norm of that, so large fp16/bf16/fp32 values cannot overflow the sum of
// squares (as on the CPU). Written into z at the modality's columns.
template <typename scalar_t, typename acc_t>
__global__ void normalise_rows_kernel(RowSources<scalar_t> sources, acc_t* __restrict__ z, int64_t z_width) {
  __shared__ acc_t shared[kWarpSize + 1];
  const int64_t width = sources.width[blockIdx.y];
  const scalar_t* x = sources.rows[blockIdx.y] + static_cast<int64_t>(blockIdx.x) * width;
  acc_t* out = z + static_cast<int64_t>(blockIdx.x) * z_width + sources.column[blockIdx.y];
  acc_t max_abs = 0;
  bool finite = true;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const acc_t v = static_cast<acc_t>(x[c]);
    finite = finite && isfinite(v);
    const acc_t magnitude = v < acc_t(0) ? -v : v;
    max_abs = magnitude > max_abs ? magnitude : max_abs;
  }
  // The CPU rejects NaN/Inf features; a check here would need a host sync.
  // Such a row becomes NaN instead: its similarities are NaN, so it is never
  // a valid pair and ranks last among the fallback candidates.
  if (!__syncthreads_and(finite)) {
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
      out[c] = std::numeric_limits<acc_t>::quiet_NaN();
    return;
  }
  max_abs = block_reduce(max_abs, gpu::MaxOp<acc_t>(), acc_t(0), shared);
  const acc_t inv_max = inverse_magnitude(max_abs);
  acc_t sum_sq = 0;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const acc_t v = static_cast<acc_t>(x[c]) * inv_max;
    sum_sq += v * v;
  }
  sum_sq = block_reduce(sum_sq, gpu::SumOp<acc_t>(), acc_t(0), shared);
  const acc_t inv_norm = inverse_row_norm(max_abs, sum_sq);
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
    out[c] = static_cast<acc_t>(x[c]) * inv_norm;
}

// partial[split] = Z[:, cols] Z[:, cols]^T over the split's columns. Block
// (tile_i <= tile_j, split) computes one 64x64 tile and mirrors it; the
// products z_i z_j and z_j z_i are the same, so S is exactly symmetric.
template <typename acc_t>
__global__ void __launch_bounds__(kGramThreads)
    gram_partial_kernel(const acc_t* __restrict__ z, int64_t batch, int64_t width, int64_t chunk,
                        int64_t num_tiles, acc_t* __restrict__ partial) {
  __shared__ acc_t a_tile[kGramDepth][kGramTile + 2];
  __shared__ acc_t b_tile[kGramDepth][kGramTile + 2];
  int64_t linear = blockIdx.x, tile_i = 0;
  while (linear >= num_tiles - tile_i) {
    linear -= num_tiles - tile_i;
    ++tile_i;
  }
  const int64_t tile_j = tile_i + linear;
  const int64_t i0 = tile_i * kGramTile, j0 = tile_j * kGramTile;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t col_end = min(width, col_begin + chunk);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  acc_t acc[4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0;

  for (int64_t k0 = col_begin; k0 < col_end; k0 += kGramDepth) {
#pragma unroll
    for (int q = 0; q < kGramTile * kGramDepth / kGramThreads; ++q) {
      const int lin = tid + q * kGramThreads;
      const int r = lin / kGramDepth, kk = lin % kGramDepth;
      const int64_t col = k0 + kk;
      const bool in_cols = col < col_end;
      a_tile[kk][r] = in_cols && i0 + r < batch ? z[(i0 + r) * width + col] : acc_t(0);
      b_tile[kk][r] = in_cols && j0 + r < batch ? z[(j0 + r) * width + col] : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kGramDepth; ++kk) {
      acc_t a[4], b[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        a[q] = a_tile[kk][ty + 16 * q];
        b[q] = b_tile[kk][tx + 16 * q];
      }
#pragma unroll
      for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[p][q] = fma(a[p], b[q], acc[p][q]);
    }
    __syncthreads();
  }

  acc_t* out = partial + static_cast<int64_t>(blockIdx.y) * batch * batch;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t i = i0 + ty + 16 * p, j = j0 + tx + 16 * q;
      if (i < batch && j < batch) {
        out[i * batch + j] = acc[p][q];
        if (tile_i != tile_j) out[j * batch + i] = acc[p][q];
      }
    }
  }
}

// S = (sum of the splits, in split order) / M, written over `s` (which may be
// `partial` itself when there is one split: each element is read, then
// written, by the same thread). Also the per-block min and max of the
// off-diagonal; NaN entries (non-finite features) are left out.
template <typename acc_t>
__global__ void similarity_reduce_kernel(const acc_t* partial, int64_t splits, int64_t batch,
                                         acc_t num_modalities, acc_t* s, acc_t* bounds) {
  __shared__ acc_t shared[kWarpSize + 1];
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const int64_t n = batch * batch;
  acc_t lo = kInf, hi = -kInf;
  for (int64_t flat = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; flat < n;
       flat += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t v = summed_similarity(partial, splits, n, flat, num_modalities);
    s[flat] = v;
    if (pair_row(flat, batch) != pair_col(flat, batch)) {
      lo = gpu::MinOp<acc_t>()(lo, v);
      hi = gpu::MaxOp<acc_t>()(hi, v);
    }
  }
  lo = block_reduce(lo, gpu::MinOp<acc_t>(), kInf, shared);
  hi = block_reduce(hi, gpu::MaxOp<acc_t>(), -kInf, shared);
  if (threadIdx.x == 0) {
    bounds[2 * blockIdx.x] = lo;
    bounds[2 * blockIdx.x + 1] = hi;
  }
}

// S' = min-max normalised S with a zero diagonal (design.md §4.3), in place.
template <typename acc_t>
__global__ void normalise_similarity_kernel(acc_t* s, const acc_t* bounds, int64_t num_bounds,
                                            int64_t batch) {
  __shared__ acc_t shared[kWarpSize + 1];
  acc_t lo, hi;
  reduce_bounds(bounds, num_bounds, shared, lo, hi);
  const int64_t n = batch * batch;
  for (int64_t flat = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; flat < n;
       flat += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    s[flat] = normalise_similarity<acc_t>(s[flat], lo, hi, pair_row(flat, batch) == pair_col(flat, batch));
  }
}

// For every pair (i, j) of flat index i * B + j:
//   valid_keys[flat]    = ordered Philox key if S'_ij > threshold and i != j, else kExcludedKey;
//   fallback_keys[flat] = descending_key(S'_ij) if i < j, else kExcludedKey.
// counts[block] = (valid pairs, valid pairs whose key is all ones): the
// latter tie with kExcludedKey (probability 2^-64 per pair) and are placed
// by select_pairs_kernel.
template <typename acc_t>
__global__ void pair_keys_kernel(const acc_t* s, const acc_t* bounds, int64_t num_bounds,
                                 int64_t batch, acc_t threshold, SeedArg seed_arg,
                                 int64_t* __restrict__ valid_keys,
                                 int64_t* __restrict__ fallback_keys, int64_t* __restrict__ counts) {
  __shared__ acc_t shared[kWarpSize + 1];
  __shared__ int64_t shared_count[kWarpSize + 1];
  acc_t lo, hi;
  reduce_bounds(bounds, num_bounds, shared, lo, hi);
  const uint64_t seed = seed_arg.get();
  const int64_t n = batch * batch;
  int64_t valid = 0, valid_all_ones = 0;
  for (int64_t flat = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; flat < n;
       flat += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = pair_row(flat, batch), j = pair_col(flat, batch);
    const acc_t similarity = normalise_similarity<acc_t>(s[flat], lo, hi, i == j);
    int64_t key = kExcludedKey;
    if (i != j && similarity > threshold) {  // NaN compares false: never valid
      const uint64_t random_key = valid_pair_key(seed, flat);
      key = ordered_key(random_key);
      ++valid;
      if (random_key == std::numeric_limits<uint64_t>::max()) ++valid_all_ones;
    }
    valid_keys[flat] = key;
    fallback_keys[flat] =
        i < j ? ordered_key(descending_similarity_key(static_cast<double>(similarity))) : kExcludedKey;
  }
  valid = block_reduce(valid, gpu::SumOp<int64_t>(), int64_t{0}, shared_count);
  valid_all_ones = block_reduce(valid_all_ones, gpu::SumOp<int64_t>(), int64_t{0}, shared_count);
  if (threadIdx.x == 0) {
    counts[2 * blockIdx.x] = valid;
    counts[2 * blockIdx.x + 1] = valid_all_ones;
  }
}

// Priority keys of the fallback candidates, laid out in ascending flat order
// so that a stable sort orders them by (key, flat index).
__global__ void fallback_keys_kernel(const int64_t* __restrict__ candidates, int64_t count,
                                     SeedArg seed_arg, int64_t* __restrict__ keys) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < count) keys[r] = ordered_key(fallback_pair_key(seed_arg.get(), candidates[r]));
}

// Thread k writes pair k and lam0[k]. With at least K valid pairs, pair k is
// the k-th valid pair in (key, flat) order (design.md §4.5); otherwise the fallback
// of design.md §4.6: the k-th candidate in (key, flat) order, then draws with
// replacement by S' rank. Both results are ready; the device-side count
// decides. Every flat index written has i != j, NaN similarities or not.
template <typename acc_t>
__global__ void select_pairs_kernel(
    const int64_t* __restrict__ counts, int64_t num_count_blocks,
    const int64_t* __restrict__ valid_order, const int64_t* __restrict__ upper_order,
    const int64_t* __restrict__ candidates, const int64_t* __restrict__ candidate_order,
    const acc_t* __restrict__ s, const acc_t* __restrict__ bounds, int64_t num_bounds,
    acc_t threshold, int64_t batch, int64_t num_mix, SeedArg seed_arg, double alpha,
    int64_t* __restrict__ idx1, int64_t* __restrict__ idx2, acc_t* __restrict__ lam0) {
  __shared__ int64_t shared[kWarpSize + 1];
  int64_t valid = 0, valid_all_ones = 0;
  for (int64_t b = threadIdx.x; b < num_count_blocks; b += blockDim.x) {
    valid += counts[2 * b];
    valid_all_ones += counts[2 * b + 1];
  }
  valid = block_reduce(valid, gpu::SumOp<int64_t>(), int64_t{0}, shared);
  valid_all_ones = block_reduce(valid_all_ones, gpu::SumOp<int64_t>(), int64_t{0}, shared);
  const uint64_t seed = seed_arg.get();
  const bool use_valid = valid >= num_mix;
  // The first `ordered` entries of valid_order are valid pairs in (key, flat) order.
  const int64_t ordered = valid - valid_all_ones;

  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < num_mix) {
    int64_t flat = -1;
    if (use_valid) {
      if (k < ordered) flat = valid_order[k];
    } else {
      const int64_t num_candidates = fallback_candidates(num_mix, batch);
      flat = k < num_candidates
                 ? candidates[candidate_order[k]]
                 : upper_order[fallback_extra_rank(seed, k - num_candidates, num_candidates)];
    }
    if (flat >= 0) {
      idx1[k] = pair_row(flat, batch);
      idx2[k] = pair_col(flat, batch);
    }
    lam0[k] = static_cast<acc_t>(beta_sample(alpha, seed, static_cast<uint64_t>(k)));
  }

  // Valid pairs whose key is all ones share their sort key with the excluded
  // pairs, after which they sort by flat index: walk that tail and keep the
  // valid ones, which is their (key, flat) order. Practically never runs.
  if (use_valid && ordered < num_mix && blockIdx.x == 0 && threadIdx.x == 0) {
    constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
    acc_t lo = kInf, hi = -kInf;
    for (int64_t g = 0; g < num_bounds; ++g) {
      lo = gpu::MinOp<acc_t>()(lo, bounds[2 * g]);
      hi = gpu::MaxOp<acc_t>()(hi, bounds[2 * g + 1]);
    }
    const int64_t n = batch * batch;
    int64_t p = ordered;
    for (int64_t kk = ordered; kk < num_mix; ++kk) {
      int64_t flat = 1;  // (0, 1): unreachable, as `valid` counts enough pairs in the tail
      while (p < n) {
        const int64_t f = valid_order[p++];
        const int64_t i = pair_row(f, batch), j = pair_col(f, batch);
        if (i != j && normalise_similarity<acc_t>(s[f], lo, hi, false) > threshold) {
          flat = f;
          break;
        }
      }
      idx1[kk] = pair_row(flat, batch);
      idx2[kk] = pair_col(flat, batch);
    }
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kDrawThreads)
    draw_pairs_block_kernel(block::DrawArgs<acc_t> args, SeedArg seed_arg) {
  __shared__ block::DrawShared<acc_t> shared;
  args.seed = seed_arg.get();
  gpu::BlockExec exec;
  block::draw_pairs(exec, shared, args);
}

// The Gram sums of the normalised rows z [B, sum of widths]: partial[split] =
// z[:, cols] z[:, cols]^T over the split's columns, [splits, B, B].
struct GramSums {
  at::Tensor partial;
  int64_t splits;
};

GramSums gram_sums(at::TensorList feats) {
  const int64_t batch = feats[0].size(0);
  const auto acc_options = feats[0].options().dtype(accumulate_type(feats[0].scalar_type()));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> rows;
  int64_t total_width = 0, max_width = 0;
  for (const at::Tensor& f : feats) {
    rows.push_back(contiguous_rows(f));
    total_width += rows.back().size(1);
    max_width = std::max(max_width, rows.back().size(1));
  }
  at::Tensor z = at::empty({batch, total_width}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows[0].scalar_type(), "msmix_normalise_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    RowSources<scalar_t> sources{};
    int count = 0;
    int64_t column = 0;
    auto launch = [&] {
      if (count == 0) return;
      const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(count));
      normalise_rows_kernel<scalar_t, acc_t><<<grid, gpu::row_threads(max_width), 0, stream>>>(
          sources, z.mutable_data_ptr<acc_t>(), total_width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      count = 0;
    };
    for (const at::Tensor& r : rows) {
      const int64_t width = r.size(1);
      if (width > 0) {  // a modality of zero width adds nothing to S
        sources.rows[count] = r.const_data_ptr<scalar_t>();
        sources.width[count] = width;
        sources.column[count] = column;
        if (++count == kMaxRowSources) launch();
      }
      column += width;
    }
    launch();
  });

  // Split the columns so that small batches with wide rows still fill the GPU;
  // the splits are summed in a fixed order by the reduction or the draw.
  const int64_t num_tiles = ceil_div(batch, kGramTile);
  const int64_t tile_pairs = num_tiles * (num_tiles + 1) / 2;
  int64_t splits = 1, chunk = kGramDepth;
  if (total_width > 0) {
    splits = std::min(ceil_div(kGramTargetBlocks, tile_pairs), ceil_div(total_width, kGramMinColumns));
    splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
    chunk = ceil_div(ceil_div(total_width, splits), kGramDepth) * kGramDepth;
    splits = ceil_div(total_width, chunk);
  }
  TORCH_CHECK(tile_pairs <= std::numeric_limits<int32_t>::max(), "similarity: batch of ", batch,
              " is too large");
  at::Tensor partial = at::empty({splits, batch, batch}, acc_options);
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "msmix_similarity", [&] {
    const dim3 gram_grid(static_cast<unsigned>(tile_pairs), static_cast<unsigned>(splits));
    gram_partial_kernel<scalar_t><<<gram_grid, kGramThreads, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), batch, total_width, chunk, num_tiles,
        partial.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return GramSums{partial, splits};
}

// S before its min-max normalisation, with the per-block bounds of its
// off-diagonal.
struct RawSimilarity {
  at::Tensor s;       // [B, B]: (1/M) sum_m z_m z_m^T in the accumulate dtype
  at::Tensor bounds;  // [num_bounds, 2]: per-block (min, max) of the off-diagonal
  int64_t num_bounds;
};

RawSimilarity raw_similarity(at::TensorList feats) {
  const int64_t batch = feats[0].size(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const GramSums sums = gram_sums(feats);
  // One split: S is reduced in place (each element read, then written, by one thread).
  at::Tensor s = sums.splits == 1 ? sums.partial.view({batch, batch}) : at::empty({batch, batch}, sums.partial.options());
  const int64_t num_bounds = grid_for(batch * batch);
  at::Tensor bounds = at::empty({num_bounds, 2}, s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "msmix_similarity", [&] {
    similarity_reduce_kernel<scalar_t><<<static_cast<unsigned>(num_bounds), kThreads, 0, stream>>>(
        sums.partial.const_data_ptr<scalar_t>(), sums.splits, batch, static_cast<scalar_t>(feats.size()),
        s.mutable_data_ptr<scalar_t>(), bounds.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return RawSimilarity{s, bounds, num_bounds};
}

bool block_draw_applies(int64_t batch, int64_t num_mix) {
  return batch * batch <= kBlockDrawMaxPairs && num_mix <= kBlockDrawMaxMix;
}

// The whole draw in one block after the Gram kernel (block_draw.h); with
// `intensities` (in the accumulate dtype) and `labels`, fused_mix's ratios and
// picked labels too.
DrawnPairs block_draw_pairs(at::TensorList feats, int64_t num_mix, double threshold, const SeedArg& seed,
                            double alpha, const at::Tensor* intensities = nullptr,
                            const at::Tensor* labels = nullptr) {
  const int64_t batch = feats[0].size(0), num_pairs = batch * batch;
  const auto index_options = feats[0].options().dtype(at::kLong);
  const GramSums sums = gram_sums(feats);
  const int64_t capacity = block::list_capacity(num_mix, batch);
  // Row 0: keys (uint64 in int64 storage), row 1: flat indices; items, ranked, chosen.
  at::Tensor scratch = at::empty({2, num_pairs + 2 * capacity}, index_options);
  int64_t* keys = scratch.mutable_data_ptr<int64_t>();
  int64_t* flats = keys + scratch.size(1);
  auto list = [&](int64_t begin) {
    return block::KeyedList{reinterpret_cast<uint64_t*>(keys + begin), flats + begin};
  };
  const block::DrawScratch lists{list(0), list(num_pairs), list(num_pairs + capacity)};
  DrawnPairs out;
  out.idx1 = at::empty({num_mix}, index_options);
  out.idx2 = at::empty({num_mix}, index_options);
  out.lam0 = at::empty({num_mix}, sums.partial.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sums.partial.scalar_type(), "msmix_draw_pairs", [&] {
    block::RatioArgs<scalar_t> ratio_args{};
    at::Tensor source, label_rows, bounds;
    if (intensities != nullptr) {
      source = intensities->contiguous();
      label_rows = labels->contiguous();
      const int64_t num_modalities = source.size(0);
      bounds = at::empty({num_modalities, 2}, source.options());
      MixRatios& r = out.ratios;
      r.lam = at::empty({num_modalities, num_mix}, source.options());
      r.lam_label = at::empty({num_mix}, source.options());
      r.labels1 = at::empty(with_rows(*labels, num_mix), labels->options());
      r.labels2 = at::empty_like(r.labels1);
      ratio_args = {source.const_data_ptr<scalar_t>(), num_modalities, bounds.mutable_data_ptr<scalar_t>(),
                    r.lam.mutable_data_ptr<scalar_t>(), r.lam_label.mutable_data_ptr<scalar_t>(),
                    picked_labels(label_rows, r.labels1, r.labels2)};
    }
    const block::DrawArgs<scalar_t> args{
        sums.partial.mutable_data_ptr<scalar_t>(), sums.splits, static_cast<scalar_t>(feats.size()), batch,
        num_mix, static_cast<scalar_t>(threshold), 0, alpha, lists, out.idx1.mutable_data_ptr<int64_t>(),
        out.idx2.mutable_data_ptr<int64_t>(), out.lam0.mutable_data_ptr<scalar_t>(), ratio_args};
    draw_pairs_block_kernel<scalar_t><<<1, kDrawThreads, 0, stream>>>(args, seed);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor similarity_forward_kernel(at::TensorList feats) {
  const int64_t batch = check_similarity_args(feats, "similarity");
  const c10::cuda::CUDAGuard guard(feats[0].device());
  RawSimilarity sim = raw_similarity(feats);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sim.s.scalar_type(), "msmix_similarity", [&] {
    normalise_similarity_kernel<scalar_t>
        <<<static_cast<unsigned>(grid_for(batch * batch)), kThreads, 0, stream>>>(
            sim.s.mutable_data_ptr<scalar_t>(), sim.bounds.const_data_ptr<scalar_t>(),
            sim.num_bounds, batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return sim.s;
}

// Indices of a stable ascending sort along the last dimension (ties keep
// their input order).
at::Tensor stable_argsort(const at::Tensor& keys) {
  return std::get<1>(at::sort(keys, /*stable=*/true, /*dim=*/-1, /*descending=*/false));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sass_select_forward_kernel(
    at::TensorList feats, int64_t num_mix, double threshold, const at::Tensor& seed_tensor,
    double alpha) {
  const int64_t batch =
      check_sass_args(feats, num_mix, threshold, seed_tensor, alpha, "sass_select");
  const c10::cuda::CUDAGuard guard(feats[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto index_options = feats[0].options().dtype(at::kLong);
  const SeedArg seed = make_seed_arg(seed_tensor);
  const int64_t num_pairs = batch * batch;
  if (block_draw_applies(batch, num_mix)) {
    DrawnPairs drawn = block_draw_pairs(feats, num_mix, threshold, seed, alpha);
    return {drawn.idx1, drawn.idx2, drawn.lam0};
  }

  RawSimilarity sim = raw_similarity(feats);
  // Row 0: valid-pair keys, row 1: fallback keys; one sort call orders both.
  at::Tensor keys = at::empty({2, num_pairs}, index_options);
  const int64_t num_count_blocks = grid_for(num_pairs);
  at::Tensor counts = at::empty({num_count_blocks, 2}, index_options);
  AT_DISPATCH_FLOATING_TYPES(sim.s.scalar_type(), "msmix_pair_keys", [&] {
    pair_keys_kernel<scalar_t><<<static_cast<unsigned>(num_count_blocks), kThreads, 0, stream>>>(
        sim.s.const_data_ptr<scalar_t>(), sim.bounds.const_data_ptr<scalar_t>(), sim.num_bounds,
        batch, static_cast<scalar_t>(threshold), seed, keys.mutable_data_ptr<int64_t>(),
        keys.mutable_data_ptr<int64_t>() + num_pairs, counts.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // Valid pairs first, in (key, flat) order; upper pairs by S' descending, ties by flat.
  const at::Tensor order = stable_argsort(keys);
  const at::Tensor valid_order = order.select(0, 0), upper_order = order.select(0, 1);
  // The fallback candidates in ascending flat order, then by (key, flat).
  const int64_t num_candidates = fallback_candidates(num_mix, batch);
  const at::Tensor candidates = std::get<0>(
      at::sort(upper_order.narrow(0, 0, num_candidates), /*stable=*/true, /*dim=*/0, false));
  at::Tensor candidate_keys = at::empty({num_candidates}, index_options);
  fallback_keys_kernel<<<static_cast<unsigned>(ceil_div(num_candidates, kThreads)), kThreads, 0,
                         stream>>>(candidates.const_data_ptr<int64_t>(), num_candidates, seed,
                                   candidate_keys.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor candidate_order = stable_argsort(candidate_keys);

  at::Tensor idx1 = at::empty({num_mix}, index_options);
  at::Tensor idx2 = at::empty({num_mix}, index_options);
  at::Tensor lam0 = at::empty({num_mix}, sim.s.options());
  AT_DISPATCH_FLOATING_TYPES(sim.s.scalar_type(), "msmix_select_pairs", [&] {
    select_pairs_kernel<scalar_t>
        <<<static_cast<unsigned>(ceil_div(num_mix, kThreads)), kThreads, 0, stream>>>(
            counts.const_data_ptr<int64_t>(), num_count_blocks,
            valid_order.const_data_ptr<int64_t>(), upper_order.const_data_ptr<int64_t>(),
            candidates.const_data_ptr<int64_t>(), candidate_order.const_data_ptr<int64_t>(),
            sim.s.const_data_ptr<scalar_t>(), sim.bounds.const_data_ptr<scalar_t>(),
            sim.num_bounds, static_cast<scalar_t>(threshold), batch, num_mix, seed, alpha,
            idx1.mutable_data_ptr<int64_t>(), idx2.mutable_data_ptr<int64_t>(),
            lam0.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {idx1, idx2, lam0};
}

}  // namespace

std::optional<DrawnPairs> draw_pairs_with_ratios_cuda(at::TensorList feats, const at::Tensor& labels,
                                                      const at::Tensor& intensities, int64_t num_mix,
                                                      double threshold, const at::Tensor& seed, double alpha) {
  // Arguments already checked by fused_mix; its guard holds the device.
  if (!block_draw_applies(feats[0].size(0), num_mix) ||
      intensities.scalar_type() != accumulate_type(feats[0].scalar_type()))
    return std::nullopt;
  return block_draw_pairs(feats, num_mix, threshold, make_seed_arg(seed), alpha, &intensities, &labels);
}

TORCH_LIBRARY_IMPL(msmix, CUDA, m) {
  m.impl("similarity", &similarity_forward_kernel);
  m.impl("sass_select", &sass_select_forward_kernel);
}

}  // namespace msmix
