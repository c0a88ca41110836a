// The Gram tiles of csrc/cpu/gram_tiles.h, every version this CPU runs,
// against a plain loop of std::fma per entry, bit for bit: tiles on, off,
// across and wholly below the diagonal (column strips among them), rows and
// columns that are not whole register blocks, widths around the depth of one
// pass (kGramDepth), float and double, and values whose partial sums cancel
// (where a different order of the same products would round differently).
#include <cmath>
#include <cstdint>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../cpu/gram_tiles.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) std::cout << "FAIL " << what << "\n";
  failures += ok ? 0 : 1;
}

template <typename T>
T fma_chain(const T* a, const T* b, int64_t width) {
  T acc = 0;
  for (int64_t k = 0; k < width; ++k) acc = std::fma(a[k], b[k], acc);
  return acc;
}

template <typename T>
void check_tiles(const char* dtype, std::mt19937_64& rng) {
  const auto versions = msmix::gram_tile_versions<T>();
  expect(msmix::gram_tile_kernel<T>() == versions.front(), "the kernel in use is the first version");
  std::normal_distribution<T> normal;
  struct Case {
    int64_t batch, width, r0, rows, c0, cols;
  };
  const std::vector<Case> cases = {
      {300, 1, 0, 64, 0, 64},          {300, 255, 0, 64, 64, 64},     {300, 256, 64, 64, 0, 64},
      {300, 257, 37, 61, 100, 97},      {300, 1023, 256, 44, 256, 44}, {300, 700, 0, 300, 0, 300},
      {70, 513, 3, 5, 0, 70},          {70, 40, 32, 38, 32, 38},      {129, 2048, 0, 129, 32, 97},
      {300, 0, 0, 10, 32, 10},         {33, 300, 0, 33, 0, 33},       {300, 257, 0, 300, 256, 44},
      {300, 700, 0, 192, 128, 64},     {300, 70, 20, 150, 100, 37},   {300, 300, 200, 100, 0, 300}};
  for (size_t v = 0; v < versions.size(); ++v) {
    msmix::GramScratch<T> scratch;
    for (const Case& c : cases) {
      std::vector<T> x(c.batch * c.width);
      // Mixed signs and scales: partial sums cancel, so every order rounds differently.
      for (int64_t i = 0; i < c.batch * c.width; ++i) x[i] = normal(rng) * std::ldexp(T(1), int(i % 7) - 3);
      const T sentinel = T(-12345);
      std::vector<T> out(c.batch * c.batch, sentinel);
      versions[v](x.data(), c.width, c.r0, c.rows, c.c0, c.cols, out.data() + c.r0 * c.batch + c.c0, c.batch,
                  scratch);
      int64_t wrong = 0, stray = 0;
      for (int64_t i = 0; i < c.batch; ++i)
        for (int64_t j = 0; j < c.batch; ++j) {
          const bool in_tile = i >= c.r0 && i < c.r0 + c.rows && j >= c.c0 && j < c.c0 + c.cols;
          const bool wanted = in_tile && j >= i;
          const T got = out[i * c.batch + j];
          if (wanted) {
            const T want = fma_chain(x.data() + i * c.width, x.data() + j * c.width, c.width);
            wrong += got == want ? 0 : 1;
          } else {
            stray += got == sentinel ? 0 : 1;
          }
        }
      std::ostringstream what;
      what << dtype << " version " << v << " of " << versions.size() << ", B=" << c.batch << " width=" << c.width
           << " tile (" << c.r0 << "+" << c.rows << ", " << c.c0 << "+" << c.cols << ")";
      expect(wrong == 0, what.str() + ": " + std::to_string(wrong) + " entries differ from the fma chain");
      expect(stray == 0, what.str() + ": " + std::to_string(stray) + " entries written outside the tile");
    }
  }
  std::cout << dtype << ": " << versions.size() << " version(s), " << cases.size() << " tiles each\n";
}

}  // namespace

int main() {
  std::mt19937_64 rng(7);
  check_tiles<float>("float", rng);
  check_tiles<double>("double", rng);
  if (failures) {
    std::cout << failures << " failure(s)\n";
    return 1;
  }
  std::cout << "gram tiles: all passed\n";
  return 0;
}
