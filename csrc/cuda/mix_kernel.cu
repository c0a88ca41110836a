// Fused per-modality mixing on CUDA (design.md §6), the computation of
// csrc/cpu/mix_kernel.cpp: every output row is written once from its source
// rows, and the backward gathers through an inverse index instead of
// scattering with atomics, so its sums run in a fixed order. Products and
// sums are rounded separately (never fused into an FMA), so the mixed rows
// and the source gradients equal the CPU kernel's bit for bit (on a CPU
// build that does not contract them either, e.g. x86-64).
//
// One launch serves up to kMaxTasks tensors of one dtype (blockIdx.z picks
// the tensor). Launches: mix = 1 (2 when the labels' dtype differs from the
// features'); mix_backward = the inverse index (only when a source gradient
// is requested: one block up to K = 2048, block_sort.h, else an entries kernel
// and a stable at::sort of the 2K entries) + 1 gather (source gradients) + 1
// ratio-gradient kernel, each of the last two doubled when the labels' dtype
// differs.
//
// The source gradients always take the deterministic gather path: the
// inverse index is one small sort, so atomics would save little, and one
// path is what both torch.use_deterministic_algorithms settings get.
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
#include <array>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../mix_math.h"
#include "../rows.h"
#include "block_sort.h"
#include "cuda_common.cuh"

namespace msmix {
namespace {

using gpu::ceil_div;
using gpu::kWarpSize;

constexpr int kThreads = 256;
constexpr int64_t kBlockInverseMaxEntries = 4096;  // 2K: one block sorts them (a guess to measure on a GPU)
constexpr int kInverseThreads = 512;
constexpr int kMaxTasks = 8;            // tensors per launch
constexpr int64_t kMaxGridY = 65535;    // column chunks beyond this loop inside the kernel
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();

// dtype of a ratio tensor: the kernels are templated on the data dtype only
// and read the ratios through this tag (one load per row, not per element).
enum RatioType : int { kRatioFloat = 0, kRatioDouble = 1, kRatioHalf = 2, kRatioBFloat16 = 3 };

int ratio_type(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return kRatioDouble;
    case at::kHalf: return kRatioHalf;
    case at::kBFloat16: return kRatioBFloat16;
    default: return kRatioFloat;
  }
}

// static_cast<acc_t>(ratio[k]), as the CPU kernel reads it.
template <typename acc_t>
__device__ __forceinline__ acc_t load_ratio(const void* ratio, int64_t k, int type) {
  switch (type) {
    case kRatioDouble: return static_cast<acc_t>(static_cast<const double*>(ratio)[k]);
    case kRatioHalf:
      return static_cast<acc_t>(static_cast<float>(static_cast<const c10::Half*>(ratio)[k]));
    case kRatioBFloat16:
      return static_cast<acc_t>(static_cast<float>(static_cast<const c10::BFloat16*>(ratio)[k]));
    default: return static_cast<acc_t>(static_cast<const float*>(ratio)[k]);
  }
}

// grad_ratio[k] = static_cast<ratio_t>(value), as the CPU kernel writes it.
template <typename acc_t>
__device__ __forceinline__ void store_ratio(void* grad_ratio, int64_t k, int type, acc_t value) {
  switch (type) {
    case kRatioDouble: static_cast<double*>(grad_ratio)[k] = static_cast<double>(value); break;
    case kRatioHalf:
      static_cast<c10::Half*>(grad_ratio)[k] = c10::Half(static_cast<float>(value));
      break;
    case kRatioBFloat16:
      static_cast<c10::BFloat16*>(grad_ratio)[k] = c10::BFloat16(static_cast<float>(value));
      break;
    default: static_cast<float*>(grad_ratio)[k] = static_cast<float>(value); break;
  }
}

// mix_value of mix_math.h with separately rounded products and sum.
template <typename acc_t>
__device__ __forceinline__ acc_t mix_value_rn(acc_t ratio, acc_t first, acc_t second) {
  return gpu::add_rn(gpu::mul_rn(ratio, first), gpu::mul_rn(acc_t(1) - ratio, second));
}

__device__ __forceinline__ int64_t lower_bound(const int64_t* values, int64_t n, int64_t target) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (values[mid] < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// One [rows, width] tensor of a multi-tensor launch.
struct RowTask {
  const void* in;     // mix: the source [B, W]; backward: grad of the output [B + K, W]
  const void* src;    // ratio gradient: the source [B, W]
  void* out;          // mix: the output [B + K, W]; source gradient: [B, W]
  const void* ratio;  // [K]: a row of lam, or lam_label
  void* grad_ratio;   // [K]: its gradient, in the ratio's dtype
  int64_t width;      // elements per row
  int ratio_type;
  bool vectorised;    // width and pointers allow 16-byte accesses
};

struct RowTasks {
  RowTask task[kMaxTasks];
  int count;
};

// out[:B] = src; out[B + k] = r_k * src[i_k] + (1 - r_k) * src[j_k].
// Grid: (B + K rows, column chunks, tensors); each thread owns kVec columns:
// consecutive ones (one 16-byte access) or, in the scalar fallback, ones a
// block apart (coalesced).
template <typename scalar_t>
__global__ void mix_rows_forward_kernel(const RowTasks tasks, const int64_t* __restrict__ idx1,
                                        const int64_t* __restrict__ idx2, int64_t batch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = gpu::vec_size<scalar_t>();
  using vec_t = gpu::Vec<scalar_t, kVec>;
  const RowTask& task = tasks.task[blockIdx.z];
  const int64_t width = task.width;
  const int64_t row = blockIdx.x;
  const scalar_t* src = static_cast<const scalar_t*>(task.in);
  scalar_t* dst = static_cast<scalar_t*>(task.out) + row * width;
  const bool mixed = row >= batch;
  const scalar_t* x1;  // the copied row, or the first source row
  const scalar_t* x2 = nullptr;
  acc_t ratio = 0;
  if (mixed) {
    const int64_t k = row - batch;
    const int64_t i = idx1[k], j = idx2[k];
    CUDA_KERNEL_ASSERT(i >= 0 && i < batch && j >= 0 && j < batch);
    x1 = src + i * width;
    x2 = src + j * width;
    ratio = load_ratio<acc_t>(task.ratio, k, task.ratio_type);
  } else {
    x1 = src + row * width;
  }
  const int64_t block_cols = static_cast<int64_t>(blockDim.x) * kVec;
  for (int64_t chunk = blockIdx.y * block_cols; chunk < width; chunk += gridDim.y * block_cols) {
    if (task.vectorised) {
      const int64_t c = chunk + static_cast<int64_t>(threadIdx.x) * kVec;
      if (c >= width) continue;
      vec_t out = gpu::load_vec<scalar_t, kVec>(x1 + c);
      if (mixed) {
        const vec_t second = gpu::load_vec<scalar_t, kVec>(x2 + c);
#pragma unroll
        for (int e = 0; e < kVec; ++e)
          out.v[e] = static_cast<scalar_t>(mix_value_rn(ratio, static_cast<acc_t>(out.v[e]),
                                                        static_cast<acc_t>(second.v[e])));
      }
      gpu::store_vec(dst + c, out);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const int64_t c = chunk + threadIdx.x + static_cast<int64_t>(e) * blockDim.x;
        if (c < width)
          dst[c] = mixed ? static_cast<scalar_t>(mix_value_rn(ratio, static_cast<acc_t>(x1[c]),
                                                              static_cast<acc_t>(x2[c])))
                         : x1[c];
      }
    }
  }
}

// Entry e of the inverse index reads source row (e odd ? idx2 : idx1)[e / 2].
__global__ void inverse_entries_kernel(const int64_t* __restrict__ idx1,
                                       const int64_t* __restrict__ idx2, int64_t batch,
                                       int64_t num_entries, int64_t* __restrict__ rows) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= num_entries) return;
  const int64_t k = entry_mix_index(e);
  const int64_t row = entry_is_second(e) ? idx2[k] : idx1[k];
  CUDA_KERNEL_ASSERT(row >= 0 && row < batch);
  rows[e] = row;
}

// The inverse index in one block: the entries stably sorted by source row
// (block_sort.h), written as the sorted rows and their entries.
__global__ void __launch_bounds__(kInverseThreads)
    inverse_index_block_kernel(const int64_t* __restrict__ idx1, const int64_t* __restrict__ idx2,
                               int64_t batch, int64_t num_mix, int64_t* __restrict__ rows,
                               int64_t* __restrict__ entries) {
  for (int64_t k = threadIdx.x; k < num_mix; k += blockDim.x)
    CUDA_KERNEL_ASSERT(idx1[k] >= 0 && idx1[k] < batch && idx2[k] >= 0 && idx2[k] < batch);
  gpu::BlockExec exec;
  block::sort_inverse_index(exec, idx1, idx2, num_mix, reinterpret_cast<uint64_t*>(rows), entries);
}

// grad_src[b] = grad_out[b] + sum over the entries e reading row b, in
// ascending e: w_e * grad_out[B + e / 2], w_e = r or 1 - r. The entries of row
// b are a segment of the stably sorted inverse index, found by binary search.
// Grid: (B rows, column chunks, tensors); the block stages the row's entries
// in shared memory, blockDim.x at a time.
template <typename scalar_t>
__global__ void mix_rows_backward_kernel(const RowTasks tasks,
                                         const int64_t* __restrict__ sorted_rows,
                                         const int64_t* __restrict__ sorted_entries,
                                         int64_t batch, int64_t num_entries) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = gpu::vec_size<scalar_t>();
  using vec_t = gpu::Vec<scalar_t, kVec>;
  __shared__ int64_t entry_mix[gpu::kMaxBlockThreads];
  __shared__ acc_t entry_weight[gpu::kMaxBlockThreads];
  const RowTask& task = tasks.task[blockIdx.z];
  const int64_t width = task.width;
  const int64_t b = blockIdx.x;
  const scalar_t* grad_out = static_cast<const scalar_t*>(task.in);
  scalar_t* grad_src = static_cast<scalar_t*>(task.out) + b * width;
  const int64_t first = lower_bound(sorted_rows, num_entries, b);
  const int64_t last = lower_bound(sorted_rows, num_entries, b + 1);
  const int64_t block_cols = static_cast<int64_t>(blockDim.x) * kVec;
  // Every thread runs every loop below (the bounds are uniform over the
  // block): the __syncthreads() calls need the whole block.
  for (int64_t chunk = blockIdx.y * block_cols; chunk < width; chunk += gridDim.y * block_cols) {
    const int64_t vec_col = chunk + static_cast<int64_t>(threadIdx.x) * kVec;
    const bool vec_active = task.vectorised && vec_col < width;
    auto column = [&](int e) -> int64_t {
      return task.vectorised ? vec_col + e : chunk + threadIdx.x + static_cast<int64_t>(e) * blockDim.x;
    };
    acc_t acc[kVec] = {};
    if (vec_active) {
      const vec_t g = gpu::load_vec<scalar_t, kVec>(grad_out + b * width + vec_col);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] = static_cast<acc_t>(g.v[e]);
    } else if (!task.vectorised) {
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        acc[e] = column(e) < width ? static_cast<acc_t>(grad_out[b * width + column(e)]) : acc_t(0);
    }
    for (int64_t e0 = first; e0 < last; e0 += blockDim.x) {
      const int64_t n = min(static_cast<int64_t>(blockDim.x), last - e0);
      __syncthreads();  // the previous batch of entries has been consumed
      if (threadIdx.x < n) {
        const int64_t entry = sorted_entries[e0 + threadIdx.x];
        const int64_t k = entry_mix_index(entry);
        entry_mix[threadIdx.x] = k;
        entry_weight[threadIdx.x] = source_weight(load_ratio<acc_t>(task.ratio, k, task.ratio_type),
                                                  entry_is_second(entry));
      }
      __syncthreads();
      for (int64_t e = 0; e < n; ++e) {
        const scalar_t* g = grad_out + (batch + entry_mix[e]) * width;
        const acc_t w = entry_weight[e];
        if (vec_active) {
          const vec_t gv = gpu::load_vec<scalar_t, kVec>(g + vec_col);
#pragma unroll
          for (int v = 0; v < kVec; ++v)
            acc[v] = gpu::add_rn(acc[v], gpu::mul_rn(w, static_cast<acc_t>(gv.v[v])));
        } else if (!task.vectorised) {
#pragma unroll
          for (int v = 0; v < kVec; ++v)
            if (column(v) < width)
              acc[v] = gpu::add_rn(acc[v], gpu::mul_rn(w, static_cast<acc_t>(g[column(v)])));
        }
      }
    }
    if (vec_active) {
      vec_t out;
#pragma unroll
      for (int e = 0; e < kVec; ++e) out.v[e] = static_cast<scalar_t>(acc[e]);
      gpu::store_vec(grad_src + vec_col, out);
    } else if (!task.vectorised) {
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        if (column(e) < width) grad_src[column(e)] = static_cast<scalar_t>(acc[e]);
    }
  }
}

// grad_ratio[k] = < grad_out[B + k], src[i_k] - src[j_k] >: one block per
// (k, tensor), a block reduction in a fixed order.
template <typename scalar_t>
__global__ void mix_ratio_backward_kernel(const RowTasks tasks, const int64_t* __restrict__ idx1,
                                          const int64_t* __restrict__ idx2, int64_t batch,
                                          int64_t num_mix) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = gpu::vec_size<scalar_t>();
  using vec_t = gpu::Vec<scalar_t, kVec>;
  __shared__ acc_t shared[kWarpSize + 1];
  const RowTask& task = tasks.task[blockIdx.y];
  const int64_t width = task.width;
  const scalar_t* grad_out = static_cast<const scalar_t*>(task.in);
  const scalar_t* src = static_cast<const scalar_t*>(task.src);
  for (int64_t k = blockIdx.x; k < num_mix; k += gridDim.x) {
    const int64_t i = idx1[k], j = idx2[k];
    CUDA_KERNEL_ASSERT(i >= 0 && i < batch && j >= 0 && j < batch);
    const scalar_t* g = grad_out + (batch + k) * width;
    const scalar_t* x1 = src + i * width;
    const scalar_t* x2 = src + j * width;
    acc_t dot = 0;
    if (task.vectorised) {
      for (int64_t c = static_cast<int64_t>(threadIdx.x) * kVec; c < width;
           c += static_cast<int64_t>(blockDim.x) * kVec) {
        const vec_t gv = gpu::load_vec<scalar_t, kVec>(g + c);
        const vec_t v1 = gpu::load_vec<scalar_t, kVec>(x1 + c);
        const vec_t v2 = gpu::load_vec<scalar_t, kVec>(x2 + c);
#pragma unroll
        for (int e = 0; e < kVec; ++e)
          dot += static_cast<acc_t>(gv.v[e]) *
                 (static_cast<acc_t>(v1.v[e]) - static_cast<acc_t>(v2.v[e]));
      }
    } else {
      for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
        dot += static_cast<acc_t>(g[c]) * (static_cast<acc_t>(x1[c]) - static_cast<acc_t>(x2[c]));
    }
    dot = gpu::block_reduce(dot, gpu::SumOp<acc_t>(), acc_t(0), shared);
    if (threadIdx.x == 0) store_ratio(task.grad_ratio, k, task.ratio_type, dot);
  }
}

// Pointer to row `row` of a contiguous [M, K] ratio tensor.
const void* ratio_row(const at::Tensor& ratios, int64_t row) {
  return static_cast<const char*>(ratios.const_data_ptr()) +
         row * ratios.size(-1) * ratios.element_size();
}

void* ratio_row(at::Tensor& ratios, int64_t row) {
  return static_cast<char*>(ratios.mutable_data_ptr()) + row * ratios.size(-1) * ratios.element_size();
}

bool can_vectorise(at::ScalarType dtype, int64_t width, std::initializer_list<const void*> ptrs) {
  if (width % (16 / static_cast<int64_t>(c10::elementSize(dtype))) != 0) return false;
  for (const void* p : ptrs)
    if (!gpu::aligned16(p)) return false;
  return true;
}

struct TypedTask {
  at::ScalarType dtype;
  RowTask task;
};

// Calls launch(dtype, tasks, max_width) for groups of up to kMaxTasks tasks
// of one dtype.
template <typename Launch>
void launch_grouped(const std::vector<TypedTask>& tasks, const Launch& launch) {
  std::vector<char> done(tasks.size(), 0);
  for (size_t first = 0; first < tasks.size(); ++first) {
    if (done[first]) continue;
    const at::ScalarType dtype = tasks[first].dtype;
    RowTasks group{};
    int64_t max_width = 0;
    for (size_t t = first; t < tasks.size(); ++t) {
      if (done[t] || tasks[t].dtype != dtype) continue;
      done[t] = 1;
      group.task[group.count++] = tasks[t].task;
      max_width = std::max(max_width, tasks[t].task.width);
      if (group.count == kMaxTasks) {
        launch(dtype, group, max_width);
        group = RowTasks{};
        max_width = 0;
      }
    }
    if (group.count > 0) launch(dtype, group, max_width);
  }
}

// Threads per block and column chunks for rows of up to max_width elements.
template <typename scalar_t>
std::pair<int, int64_t> row_launch_shape(int64_t max_width) {
  constexpr int kVec = gpu::vec_size<scalar_t>();
  const int threads = gpu::row_threads(ceil_div(max_width, kVec));
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(ceil_div(max_width, static_cast<int64_t>(threads) * kVec), kMaxGridY));
  return {threads, chunks};
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mix_forward_kernel(
    at::TensorList feats, const at::Tensor& labels, const at::Tensor& idx1, const at::Tensor& idx2,
    const at::Tensor& lam, const at::Tensor& lam_label) {
  check_mix_args(feats, labels, idx1, idx2, lam, lam_label, "mix");
  const c10::cuda::CUDAGuard guard(feats[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t batch = feats[0].size(0), num_mix = idx1.size(0);
  const at::Tensor i1 = idx1.contiguous(), i2 = idx2.contiguous();
  const at::Tensor lam_c = lam.contiguous(), lam_label_c = lam_label.contiguous();
  TORCH_CHECK(batch + num_mix <= kMaxGridX, "mix: B + K = ", batch + num_mix, " rows is too many");

  std::vector<at::Tensor> sources;  // contiguous inputs, alive until the launches
  std::vector<TypedTask> tasks;
  auto add = [&](const at::Tensor& x, const void* ratio, int type) {
    const at::Tensor src = x.contiguous();
    at::Tensor out = at::empty(with_rows(src, batch + num_mix), src.options());
    const int64_t width = row_width(src);
    if (width > 0 && batch + num_mix > 0) {
      RowTask task{};
      task.in = src.const_data_ptr();
      task.out = out.mutable_data_ptr();
      task.ratio = ratio;
      task.width = width;
      task.ratio_type = type;
      task.vectorised = can_vectorise(src.scalar_type(), width, {task.in, task.out});
      tasks.push_back({src.scalar_type(), task});
    }
    sources.push_back(src);
    return out;
  };
  std::vector<at::Tensor> feats_out;
  for (size_t m = 0; m < feats.size(); ++m)
    feats_out.push_back(add(feats[m], ratio_row(lam_c, static_cast<int64_t>(m)), ratio_type(lam_c.scalar_type())));
  at::Tensor labels_out = add(labels, lam_label_c.const_data_ptr(), ratio_type(lam_label_c.scalar_type()));

  launch_grouped(tasks, [&](at::ScalarType dtype, const RowTasks& group, int64_t max_width) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "msmix_mix", [&] {
      const auto [threads, chunks] = row_launch_shape<scalar_t>(max_width);
      const dim3 grid(static_cast<unsigned>(batch + num_mix), static_cast<unsigned>(chunks),
                      static_cast<unsigned>(group.count));
      mix_rows_forward_kernel<scalar_t><<<grid, threads, 0, stream>>>(
          group, i1.const_data_ptr<int64_t>(), i2.const_data_ptr<int64_t>(), batch);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {feats_out, labels_out};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor> mix_backward_kernel(
    at::TensorList grad_feats_out, const at::Tensor& grad_labels_out, at::TensorList feats,
    const at::Tensor& labels, const at::Tensor& idx1, const at::Tensor& idx2, const at::Tensor& lam,
    const at::Tensor& lam_label, std::array<bool, 4> output_mask) {
  const auto [need_feats, need_labels, need_lam, need_lam_label] = output_mask;
  const int64_t batch = check_mix_backward_args(grad_feats_out, grad_labels_out, feats, labels, idx1, idx2, lam,
                                                lam_label, need_lam, need_lam_label);
  const int64_t num_mix = idx1.size(0), num_modalities = lam.size(0);
  const at::Device device = grad_labels_out.device();
  TORCH_CHECK(batch <= kMaxGridX, "mix_backward: B = ", batch, " rows is too many");

  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor i1 = idx1.contiguous(), i2 = idx2.contiguous();
  const at::Tensor lam_c = lam.contiguous(), lam_label_c = lam_label.contiguous();

  // Inverse index: the 2K entries stably sorted by source row, so each row's
  // entries are a segment in ascending entry order (the CPU's summation order).
  const int64_t num_entries = 2 * num_mix;
  at::Tensor sorted_rows, sorted_entries;
  if ((need_feats || need_labels) && num_entries > 0 && num_entries <= kBlockInverseMaxEntries) {
    // Row indices < B sort as uint64 as they do as int64; the padding sorts after them.
    sorted_rows = at::empty({block::sort_capacity(num_entries)}, i1.options());
    sorted_entries = at::empty_like(sorted_rows);
    inverse_index_block_kernel<<<1, kInverseThreads, 0, stream>>>(
        i1.const_data_ptr<int64_t>(), i2.const_data_ptr<int64_t>(), batch, num_mix,
        sorted_rows.mutable_data_ptr<int64_t>(), sorted_entries.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if ((need_feats || need_labels) && num_entries > 0) {
    at::Tensor rows = at::empty({num_entries}, i1.options());
    inverse_entries_kernel<<<static_cast<unsigned>(ceil_div(num_entries, kThreads)), kThreads, 0, stream>>>(
        i1.const_data_ptr<int64_t>(), i2.const_data_ptr<int64_t>(), batch, num_entries,
        rows.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::tie(sorted_rows, sorted_entries) = at::sort(rows, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  }

  std::vector<at::Tensor> keep_alive;
  std::vector<TypedTask> source_tasks, ratio_tasks;
  std::vector<at::Tensor> grad_feats;
  at::Tensor grad_lam =
      at::empty({need_lam ? num_modalities : 0, need_lam ? num_mix : 0}, lam.options());
  at::Tensor grad_labels = at::empty({0}, grad_labels_out.options());
  at::Tensor grad_lam_label = at::empty({0}, lam_label.options());

  // Gradients of one mixed tensor: into its source rows (*grad_x) and into its ratios.
  auto add = [&](const at::Tensor& grad_out, const at::Tensor& x, const void* ratio, int type,
                 at::Tensor* grad_x, void* grad_ratio) {
    const at::Tensor g = grad_out.contiguous();
    keep_alive.push_back(g);
    const int64_t width = row_width(g);
    if (grad_x != nullptr) {
      *grad_x = at::empty(with_rows(g, batch), g.options());
      if (width > 0 && batch > 0) {
        RowTask task{};
        task.in = g.const_data_ptr();
        task.out = grad_x->mutable_data_ptr();
        task.ratio = ratio;
        task.width = width;
        task.ratio_type = type;
        task.vectorised = can_vectorise(g.scalar_type(), width, {task.in, task.out});
        source_tasks.push_back({g.scalar_type(), task});
      }
    }
    if (grad_ratio != nullptr && num_mix > 0) {
      const at::Tensor src = x.contiguous();
      check_saved_rows(src, g, batch, width);
      keep_alive.push_back(src);
      RowTask task{};
      task.in = g.const_data_ptr();
      task.src = src.const_data_ptr();
      task.grad_ratio = grad_ratio;
      task.width = width;
      task.ratio_type = type;
      task.vectorised = can_vectorise(g.scalar_type(), width, {task.in, task.src});
      ratio_tasks.push_back({g.scalar_type(), task});
    }
  };
  const int lam_type = ratio_type(lam_c.scalar_type());
  for (int64_t m = 0; m < num_modalities; ++m) {
    at::Tensor grad_x;
    add(grad_feats_out[m], need_lam ? feats[m] : at::Tensor(), ratio_row(lam_c, m), lam_type,
        need_feats ? &grad_x : nullptr, need_lam ? ratio_row(grad_lam, m) : nullptr);
    if (need_feats) grad_feats.push_back(grad_x);
  }
  if (need_lam_label) grad_lam_label = at::empty({num_mix}, lam_label.options());
  if (need_labels || need_lam_label)
    add(grad_labels_out, labels, lam_label_c.const_data_ptr(), ratio_type(lam_label_c.scalar_type()),
        need_labels ? &grad_labels : nullptr,
        need_lam_label ? grad_lam_label.mutable_data_ptr() : nullptr);

  const int64_t* rows_ptr = sorted_rows.defined() ? sorted_rows.const_data_ptr<int64_t>() : nullptr;
  const int64_t* entries_ptr =
      sorted_entries.defined() ? sorted_entries.const_data_ptr<int64_t>() : nullptr;
  const int64_t sorted_count = sorted_rows.defined() ? num_entries : 0;
  launch_grouped(source_tasks, [&](at::ScalarType dtype, const RowTasks& group, int64_t max_width) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "msmix_mix_backward", [&] {
      const auto [threads, chunks] = row_launch_shape<scalar_t>(max_width);
      const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(chunks),
                      static_cast<unsigned>(group.count));
      mix_rows_backward_kernel<scalar_t><<<grid, threads, 0, stream>>>(
          group, rows_ptr, entries_ptr, batch, sorted_count);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  launch_grouped(ratio_tasks, [&](at::ScalarType dtype, const RowTasks& group, int64_t max_width) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "msmix_mix_backward_ratio", [&] {
      const int threads = gpu::row_threads(ceil_div(max_width, gpu::vec_size<scalar_t>()));
      const dim3 grid(static_cast<unsigned>(std::min(num_mix, kMaxGridX)), static_cast<unsigned>(group.count));
      mix_ratio_backward_kernel<scalar_t><<<grid, threads, 0, stream>>>(
          group, i1.const_data_ptr<int64_t>(), i2.const_data_ptr<int64_t>(), batch, num_mix);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_feats, grad_labels, grad_lam, grad_lam_label};
}

}  // namespace

TORCH_LIBRARY_IMPL(msmix, CUDA, m) {
  m.impl("mix", &mix_forward_kernel);
  m.impl("mix_backward", &mix_backward_kernel);
}

}  // namespace msmix
