// Tiles of a Gram matrix G = X X^T on the CPU, msmix's own GEMM for S's Gram
// products from kMinTiledBatch rows (sass_kernel.cpp upper_grams).
//
// Every entry is one fused multiply-add chain over k in order:
//   G_ij = fma(x_i,K-1, x_j,K-1, ... fma(x_i,1, x_j,1, fma(x_i,0, x_j,0, 0)))
// whatever the tiling, the register block, the vector width or the thread
// that computes it. So the bits depend on X alone, not on the number of threads
// or the CPU model. A BLAS GEMM gives neither: with the MKL of the x86 torch
// wheels, 64 x 64 tiles of an Intel Xeon with rows of 1000 or more elements
// came out with other last bits on 2 threads than on 1 (it seems to split k
// among its threads), and its kernels differ between CPU models.
//
// The register-blocked loop is written once (gram_tile_body) and compiled per
// instruction set with a register block that suits it; the vectoriser turns
// std::fma into vector FMAs, and where the CPU has no FMA the C library's fma
// gives the same exactly rounded result (slowly). Only plain C++ here, no
// torch headers: the instruction-set attributes stay on these functions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__GNUC__)
#define MSMIX_GRAM_INLINE __attribute__((always_inline)) inline
#else
#define MSMIX_GRAM_INLINE inline
#endif

// Instruction-set versions need GCC/Clang function targets on x86-64.
#if defined(__GNUC__) && defined(__x86_64__)
#define MSMIX_GRAM_X86_VERSIONS 1
#endif

namespace msmix {
namespace {

// Depth of one pass over k: a packed column panel (NR x kGramDepth) stays in
// the L1 cache while every row panel of the tile passes it.
constexpr int64_t kGramDepth = 256;

// The packed column panels, a zero-padded copy of a last partial row panel
// (padded as pack_panels pads), and the tile's result, reused from tile to tile.
template <typename T>
struct GramScratch {
  std::vector<T> cols, last_rows, out;
};

// One register block: acc[r][j] continues its fma chain over kc steps. Row r
// of the block is a[r * lda + k] (rows of X are read in place: a broadcast
// needs no packing), b is NR x kc packed k-major (a vector load per step);
// c (ldc) holds the chains so far unless `first`.
template <typename T, int MR, int NR>
MSMIX_GRAM_INLINE void gram_block(int64_t kc, const T* __restrict a, int64_t lda, const T* __restrict b,
                                  T* __restrict c, int64_t ldc, bool first) {
  T acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = first ? T(0) : c[r * ldc + j];
  for (int64_t k = 0; k < kc; ++k) {
    for (int r = 0; r < MR; ++r) {
      const T x = a[r * lda + k];
#pragma omp simd
      for (int j = 0; j < NR; ++j) acc[r][j] = std::fma(x, b[k * NR + j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) c[r * ldc + j] = acc[r][j];
}

// Copies rows [first, first + count) of x (row stride width), columns
// [k0, k0 + kc), into panels of P rows each, k-major (a transpose, so that a
// step of a block loads P values at once). Rows past `count` are 0: their
// lanes are discarded, and zeros keep them off stale values (a subnormal
// costs an FMA a microcode assist).
template <typename T, int P>
MSMIX_GRAM_INLINE void pack_panels(const T* x, int64_t width, int64_t first, int64_t count, int64_t k0, int64_t kc,
                                   T* dst) {
  const int64_t panels = (count + P - 1) / P;
  for (int64_t p = 0; p < panels; ++p) {
    T* panel = dst + p * kc * P;
    const int64_t live = std::min<int64_t>(P, count - p * P);
    const T* src = x + (first + p * P) * width + k0;
    // k outer: the stores run contiguously and the P source rows are read as
    // P streams (G of [512, 3072] in 256-row tiles, one core: 7.2-7.3 ms
    // against 7.6-7.9 ms with r outer).
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t r = 0; r < live; ++r) panel[k * P + r] = src[r * width + k];
      for (int64_t r = live; r < P; ++r) panel[k * P + r] = T(0);
    }
  }
}

// out[i, j] = G[r0 + i, c0 + j] for i < rows, j < cols (out's row stride ldo)
// on and above G's diagonal (r0 + i <= c0 + j), where x is [B, width]
// row-major. Entries below the diagonal are neither written nor, as far as
// whole register blocks allow, computed. A tile may be any rectangle: a tall
// one (a column strip of G's upper triangle) packs its columns once for all
// its rows.
template <typename T, int MR, int NR>
MSMIX_GRAM_INLINE void gram_tile_body(const T* x, int64_t width, int64_t r0, int64_t rows, int64_t c0, int64_t cols,
                                      T* out, int64_t ldo, GramScratch<T>& scratch) {
  const int64_t row_panels = (rows + MR - 1) / MR, col_panels = (cols + NR - 1) / NR;
  const int64_t ldc = col_panels * NR;
  const int64_t depth = std::min(kGramDepth, width);
  scratch.cols.resize(col_panels * NR * depth);
  scratch.last_rows.resize(MR * depth);
  scratch.out.resize(row_panels * MR * ldc);
  T* c = scratch.out.data();
  if (width == 0) std::fill(c, c + row_panels * MR * ldc, T(0));
  const int64_t full_row_panels = rows / MR, last_live = rows % MR;
  for (int64_t k0 = 0; k0 < width; k0 += kGramDepth) {
    const int64_t kc = std::min(kGramDepth, width - k0);
    pack_panels<T, NR>(x, width, c0, cols, k0, kc, scratch.cols.data());
    if (last_live > 0) {
      T* last = scratch.last_rows.data();
      std::fill(last, last + MR * kc, T(0));
      for (int64_t r = 0; r < last_live; ++r)
        std::copy_n(x + (r0 + full_row_panels * MR + r) * width + k0, kc, last + r * kc);
    }
    for (int64_t p = 0; p < row_panels; ++p) {
      const bool full = p < full_row_panels;
      const T* a = full ? x + (r0 + p * MR) * width + k0 : scratch.last_rows.data();
      for (int64_t q = 0; q < col_panels; ++q) {
        if (c0 + (q + 1) * NR <= r0 + p * MR) continue;  // wholly below the diagonal
        gram_block<T, MR, NR>(kc, a, full ? width : kc, scratch.cols.data() + q * kc * NR,
                              c + p * MR * ldc + q * NR, ldc, k0 == 0);
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t j0 = std::clamp<int64_t>(r0 + i - c0, 0, cols);
    std::copy(c + i * ldc + j0, c + i * ldc + cols, out + i * ldo + j0);
  }
}

// Register blocks of two vectors per row (of VectorBytes each).
template <typename T, int VectorBytes>
constexpr int kTwoVectors = static_cast<int>(2 * VectorBytes / sizeof(T));

template <typename T>
using GramTileFn = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, T*, int64_t, GramScratch<T>&);

// The versions, each with the register block that measured best for it among
// 6 x 16, 8 x 16, 4 x 32, 6 x 32, 8 x 32, 12 x 32 and 4 x 48 (2 threads of an
// Intel Xeon, G of [2048, 3072] float: AVX-512 8 x 32 at 92 GMAC/s, 6 x 16 at
// 73; 256-bit FMA 6 x 16 at 51, 6 x 32 at 37, as it spills). Without FMA the
// block is that of 256-bit FMA.
template <typename T>
void gram_tile_portable(const T* x, int64_t width, int64_t r0, int64_t rows, int64_t c0, int64_t cols, T* out,
                        int64_t ldo, GramScratch<T>& scratch) {
  gram_tile_body<T, 6, kTwoVectors<T, 32>>(x, width, r0, rows, c0, cols, out, ldo, scratch);
}

#ifdef MSMIX_GRAM_X86_VERSIONS
template <typename T>
__attribute__((target("fma"))) void gram_tile_fma(const T* x, int64_t width, int64_t r0, int64_t rows, int64_t c0,
                                                  int64_t cols, T* out, int64_t ldo, GramScratch<T>& scratch) {
  gram_tile_body<T, 6, kTwoVectors<T, 32>>(x, width, r0, rows, c0, cols, out, ldo, scratch);
}

template <typename T>
__attribute__((target("avx512f"))) void gram_tile_avx512(const T* x, int64_t width, int64_t r0, int64_t rows,
                                                         int64_t c0, int64_t cols, T* out, int64_t ldo,
                                                         GramScratch<T>& scratch) {
  gram_tile_body<T, 8, kTwoVectors<T, 64>>(x, width, r0, rows, c0, cols, out, ldo, scratch);
}
#endif

// Every version this CPU runs, fastest first (all give the same bits; the
// tests compare each with a plain fma loop).
template <typename T>
std::vector<GramTileFn<T>> gram_tile_versions() {
  std::vector<GramTileFn<T>> versions;
#ifdef MSMIX_GRAM_X86_VERSIONS
  if (__builtin_cpu_supports("avx512f")) versions.push_back(&gram_tile_avx512<T>);
  if (__builtin_cpu_supports("fma")) versions.push_back(&gram_tile_fma<T>);
#endif
  versions.push_back(&gram_tile_portable<T>);
  return versions;
}

template <typename T>
GramTileFn<T> gram_tile_kernel() {
  static const GramTileFn<T> best = gram_tile_versions<T>().front();
  return best;
}

}  // namespace
}  // namespace msmix
