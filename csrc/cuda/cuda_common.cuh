// Device helpers shared by the CUDA kernels of msmix_ext: block reductions,
// the one-block executor, 16-byte vectors, and IEEE multiply/add that nvcc
// may not fuse into an FMA (so that the mixing kernels round exactly like the
// CPU kernels).
#pragma once

#include <cstdint>

namespace msmix {
namespace gpu {

constexpr int kWarpSize = 32;
constexpr int kMaxBlockThreads = 256;

// Host side: threads for a block that walks `units` items of one row, a
// multiple of the warp size (the reductions below rely on full warps).
inline int row_threads(int64_t units) {
  const int64_t rounded = (units + kWarpSize - 1) / kWarpSize * kWarpSize;
  return static_cast<int>(rounded < kWarpSize ? kWarpSize
                                              : (rounded > kMaxBlockThreads ? kMaxBlockThreads : rounded));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
struct SumOp {
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
// NaN never wins a comparison, so min/max skip NaN operands that come second.
template <typename T>
struct MinOp {
  __device__ __forceinline__ T operator()(T a, T b) const { return b < a ? b : a; }
};
template <typename T>
struct MaxOp {
  __device__ __forceinline__ T operator()(T a, T b) const { return b > a ? b : a; }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T value, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  return value;
}

// Reduction over the block (blockDim.x a multiple of 32, every thread calls
// it); every thread gets the result. `shared` holds kWarpSize + 1 values. The
// combination order depends only on blockDim.x, so the result is
// deterministic.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op, T identity, T* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  value = warp_reduce(value, op);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < num_warps ? shared[lane] : identity;
    value = warp_reduce(value, op);
    if (lane == 0) shared[kWarpSize] = value;
  }
  __syncthreads();
  return shared[kWarpSize];
}

// The executor of block_sort.h's one-block algorithms: their phases separated
// by the block's barriers.
struct BlockExec {
  __device__ int threads() const { return static_cast<int>(blockDim.x); }
  template <typename F>
  __device__ void each(F f) const {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
  template <typename F>
  __device__ void single(F f) const {
    if (threadIdx.x == 0) f();
    __syncthreads();
  }
  __device__ static uint32_t atomic_inc(uint32_t* p) { return atomicAdd(p, 1u); }
};

// kVec elements loaded or stored as one 16-byte access. Copies go through the
// uint4 member: a struct of c10::Half copied member by member would be
// split into 2-byte stores.
template <typename T, int kVec>
union alignas(16) Vec {
  uint4 raw;
  T v[kVec];
};

template <typename T, int kVec>
__device__ __forceinline__ Vec<T, kVec> load_vec(const T* p) {
  Vec<T, kVec> out;
  out.raw = *reinterpret_cast<const uint4*>(p);
  return out;
}

// __stwb (a plain st.global) takes the 16 bytes as one operand: an
// assignment can come out as four or eight narrow stores.
template <typename T, int kVec>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, kVec>& value) {
  __stwb(reinterpret_cast<uint4*>(p), value.raw);
}

template <typename T>
constexpr int vec_size() {
  return static_cast<int>(16 / sizeof(T));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Round-to-nearest products and sums that are never contracted into an FMA:
// the CPU kernels compute r * a + (1 - r) * b with separate roundings.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

}  // namespace gpu
}  // namespace msmix
