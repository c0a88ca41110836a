// The one-block CUDA kernels' code (csrc/cuda/block_draw.h, block_sort.h) run
// on the CPU by a sequential executor, against independent computations: the
// radix selection against std::sort, the whole draw (with and without
// fused_mix's ratios and picked labels) against the CPU operator
// msmix::fused_mix, bit for bit, on the CPU's own S', and the inverse index of
// mix_backward against the CPU kernel's counting sort. What this cannot see
// (the barriers and atomics of a real block) the CUDA tests check on a GPU.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../cuda/block_draw.h"
#include "../cuda/block_sort.h"
#include "../mix_math.h"

namespace {

using namespace msmix::block;

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) std::cout << "FAIL " << what << "\n";
  failures += ok ? 0 : 1;
}

// One block of `threads` threads, run one thread after another per phase, in
// ascending or descending thread order. Within a phase the threads may share
// nothing but atomic_inc, so every order must give the same draw: a phase that
// read what another thread wrote in the same phase would show up as a
// difference between the two orders (the GPU tests remain the check of the
// real barriers).
struct SequentialExec {
  int num_threads;
  bool reversed = false;
  int threads() const { return num_threads; }
  template <typename F>
  void each(F f) const {
    for (int t = 0; t < num_threads; ++t) f(reversed ? num_threads - 1 - t : t);
  }
  template <typename F>
  void single(F f) const {
    f();
  }
  static uint32_t atomic_inc(uint32_t* p) { return (*p)++; }
};

struct ListStorage {
  std::vector<uint64_t> key;
  std::vector<int64_t> flat;
  explicit ListStorage(int64_t n) : key(n), flat(n) {}
  KeyedList list() { return KeyedList{key.data(), flat.data()}; }
};

// select_smallest against a full sort, over sizes, counts, thread counts and
// keys drawn from narrow ranges (many equal keys, so the flat digits decide).
void test_select_smallest() {
  std::mt19937_64 rng(1);
  int cases = 0;
  for (int threads : {1, 32, 100, 512}) {
    for (int64_t size : {1, 2, 7, 256, 1000, 4099}) {
      for (uint64_t key_range : {uint64_t{1}, uint64_t{3}, uint64_t{300}, ~uint64_t{0}}) {
        const int64_t flat_bound = size * 3 + 5;
        std::vector<std::pair<uint64_t, int64_t>> items;
        std::vector<int64_t> flats(flat_bound);
        for (int64_t f = 0; f < flat_bound; ++f) flats[f] = f;
        std::shuffle(flats.begin(), flats.end(), rng);
        for (int64_t i = 0; i < size; ++i) {
          const uint64_t raw = rng();
          // The top of the key range too: all-ones keys must sort like any other.
          const uint64_t key = key_range == ~uint64_t{0} ? raw : ~uint64_t{0} - raw % key_range;
          items.emplace_back(key, flats[i]);
        }
        std::vector<std::pair<uint64_t, int64_t>> sorted = items;
        std::sort(sorted.begin(), sorted.end());
        for (int64_t count : {int64_t{1}, size / 2 + 1, size}) {
          ListStorage in(size), out(sort_capacity(count));
          for (int64_t i = 0; i < size; ++i) {
            in.key[i] = items[i].first;
            in.flat[i] = items[i].second;
          }
          DrawShared<float> shared;
          SequentialExec exec{threads, size % 2 == 1};
          select_smallest(exec, shared, in.list(), size, count, flat_bound, out.list());
          bool ok = true;
          for (int64_t k = 0; k < count; ++k)
            ok = ok && out.key[k] == sorted[k].first && out.flat[k] == sorted[k].second;
          std::ostringstream what;
          what << "select_smallest: threads " << threads << ", size " << size << ", count " << count
               << ", key range " << key_range;
          expect(ok, what.str());
          ++cases;
        }
      }
    }
  }
  std::cout << "ok   select_smallest equals a full sort (" << cases << " cases)\n";
}

using FusedResult = std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                               at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using FusedOp = FusedResult(at::TensorList, const at::Tensor&, const at::Tensor&, int64_t, double, const at::Tensor&,
                            double);

template <typename T>
at::Tensor to_tensor(const std::vector<T>& values, at::ScalarType dtype) {
  return at::from_blob(const_cast<T*>(values.data()), {static_cast<int64_t>(values.size())},
                       at::TensorOptions().dtype(dtype))
      .clone();
}

// The block draw on S' (M = 1, one split: S = S', whose off-diagonal bounds
// are 0 and 1, so the min-max step gives S' back bit for bit) against the CPU
// operators on the same features: the draw alone, and with fused_mix's ratios
// and picked labels in ascending and in descending thread order.
template <typename acc_t>
bool same_draw(const std::vector<at::Tensor>& feats, int64_t num_mix, double threshold, int64_t seed,
               double alpha, int threads) {
  static auto similarity = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("msmix::similarity", "")
                               .typed<at::Tensor(at::TensorList)>();
  static auto fused_mix = c10::Dispatcher::singleton().findSchemaOrThrow("msmix::fused_mix", "").typed<FusedOp>();
  const int64_t batch = feats[0].size(0), num_modalities = static_cast<int64_t>(feats.size());
  const at::ScalarType acc_dtype = feats[0].scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor intensities = (3 * at::randn({num_modalities, batch})).to(acc_dtype);
  const at::Tensor labels = at::randn({batch, 1}, at::kDouble);  // another dtype and two dimensions
  const at::Tensor s = similarity.call(feats).contiguous();
  const auto want = fused_mix.call(feats, labels, intensities, num_mix, threshold, at::tensor(seed), alpha);

  bool same = true;
  for (int run = 0; run < 3; ++run) {
    const bool with_ratios = run > 0, reversed = run == 2;
    at::Tensor partial = s.clone();
    const int64_t capacity = list_capacity(num_mix, batch);
    ListStorage items(batch * batch), ranked(capacity), chosen(capacity);
    std::vector<int64_t> idx1(num_mix, -1), idx2(num_mix, -1);
    std::vector<acc_t> lam0(num_mix), lam(num_modalities * num_mix), lam_label(num_mix), bounds(2 * num_modalities);
    std::vector<double> labels1(num_mix), labels2(num_mix);
    RatioArgs<acc_t> ratios{};
    if (with_ratios)
      ratios = {intensities.data_ptr<acc_t>(), num_modalities, bounds.data(), lam.data(), lam_label.data(),
                msmix::PickedLabels{static_cast<const unsigned char*>(labels.const_data_ptr()),
                                    reinterpret_cast<unsigned char*>(labels1.data()),
                                    reinterpret_cast<unsigned char*>(labels2.data()), sizeof(double)}};
    DrawArgs<acc_t> args{partial.data_ptr<acc_t>(), 1, acc_t(1), batch, num_mix, static_cast<acc_t>(threshold),
                         static_cast<uint64_t>(seed), alpha,
                         DrawScratch{items.list(), ranked.list(), chosen.list()},
                         idx1.data(), idx2.data(), lam0.data(), ratios};
    DrawShared<acc_t> shared;
    SequentialExec exec{threads, reversed};
    draw_pairs(exec, shared, args);
    same = same && at::equal(std::get<2>(want), to_tensor(idx1, at::kLong)) &&
           at::equal(std::get<3>(want), to_tensor(idx2, at::kLong)) &&
           at::equal(std::get<6>(want), to_tensor(lam0, acc_dtype));
    if (with_ratios)
      same = same && at::equal(std::get<4>(want), to_tensor(lam, acc_dtype).view({num_modalities, num_mix})) &&
             at::equal(std::get<5>(want), to_tensor(lam_label, acc_dtype)) &&
             at::equal(std::get<7>(want), to_tensor(labels1, at::kDouble).view({num_mix, 1})) &&
             at::equal(std::get<8>(want), to_tensor(labels2, at::kDouble).view({num_mix, 1}));
  }
  return same;
}

// Features of B samples in `clusters` groups: many similar pairs within a
// group, few across, so thresholds pick from a few to most of the pairs.
std::vector<at::Tensor> clustered_feats(int64_t batch, int64_t clusters, at::ScalarType dtype, int64_t seed) {
  at::manual_seed(seed);
  const at::Tensor group = at::randint(clusters, {batch}, at::kLong);
  std::vector<at::Tensor> feats;
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{batch, 16}, std::vector<int64_t>{batch, 3, 8}}) {
    std::vector<int64_t> centre_shape = shape;
    centre_shape[0] = clusters;
    const at::Tensor centres = at::randn(centre_shape, at::kDouble);
    feats.push_back((centres.index_select(0, group) + 0.4 * at::randn(shape, at::kDouble)).to(dtype));
  }
  return feats;
}

void test_draw_matches_cpu_operator() {
  int cases = 0;
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    for (int64_t batch : {2, 3, 12, 64, 97}) {
      for (double threshold : {0.0, 0.4, 0.8, 0.99}) {
        for (int64_t num_mix : {int64_t{1}, batch, 3 * batch, batch * batch + 5}) {
          for (int threads : {32, 512}) {
            const std::vector<at::Tensor> feats = clustered_feats(batch, 4, dtype, batch * 31 + num_mix);
            const int64_t seed = (int64_t{1} << 40) + batch * 7 + threads;
            const bool ok = dtype == at::kDouble ? same_draw<double>(feats, num_mix, threshold, seed, 2.0, threads)
                                                 : same_draw<float>(feats, num_mix, threshold, seed, 0.5, threads);
            std::ostringstream what;
            what << "block draw == CPU fused_mix: " << dtype << ", B " << batch << ", threshold " << threshold
                 << ", K " << num_mix << ", threads " << threads;
            expect(ok, what.str());
            ++cases;
          }
        }
      }
    }
  }
  // Identical samples: every S' is 0.5, so the fallback ranks by flat index alone.
  for (int64_t batch : {2, 9, 40}) {
    const std::vector<at::Tensor> feats = {at::ones({batch, 5}), at::ones({batch, 2, 2})};
    for (double threshold : {0.3, 0.7}) {
      expect(same_draw<float>(feats, batch + 3, threshold, 11, 1.0, 64),
             "block draw == CPU fused_mix on identical samples, B " + std::to_string(batch));
      ++cases;
    }
  }
  std::cout << "ok   the block draw equals the CPU fused_mix (" << cases << " cases)\n";
}

// S = (sum of the splits) / M, in split order, over the first split: what the
// grid's similarity_reduce_kernel writes.
void test_split_sums() {
  at::manual_seed(3);
  const int64_t batch = 20, num_mix = 10;
  const at::Tensor parts = at::randn({3, batch, batch});
  const at::Tensor expected = (parts[0] + parts[1] + parts[2]) / 2.0f;
  at::Tensor partial = parts.clone();
  const int64_t capacity = list_capacity(num_mix, batch);
  ListStorage items(batch * batch), ranked(capacity), chosen(capacity);
  std::vector<int64_t> idx1(num_mix), idx2(num_mix);
  std::vector<float> lam0(num_mix);
  DrawArgs<float> args{partial.data_ptr<float>(), 3, 2.0f, batch, num_mix, 0.5f, 5, 2.0,
                       DrawScratch{items.list(), ranked.list(), chosen.list()},
                       idx1.data(), idx2.data(), lam0.data()};
  DrawShared<float> shared;
  SequentialExec exec{128};
  draw_pairs(exec, shared, args);
  const at::Tensor off = 1 - at::eye(batch);
  const float lo = expected.masked_select(off.to(at::kBool)).min().item<float>();
  const float hi = expected.masked_select(off.to(at::kBool)).max().item<float>();
  expect(at::equal(partial[0], expected), "the splits are summed in order and divided by M");
  expect(shared.lo == lo && shared.hi == hi, "the bounds are the min and max of the off-diagonal of S");
  std::cout << "ok   split sums and bounds\n";
}

}  // namespace

// sort_inverse_index against mix_math.h's counting sort (the CPU mix_backward's).
void test_inverse_index() {
  std::mt19937_64 rng(4);
  int cases = 0;
  for (int64_t batch : {2, 3, 17, 300}) {
    for (int64_t num_mix : {int64_t{1}, int64_t{5}, batch, 3 * batch + 1, int64_t{700}}) {
      std::vector<int64_t> idx1(num_mix), idx2(num_mix);
      for (int64_t k = 0; k < num_mix; ++k) {
        idx1[k] = static_cast<int64_t>(rng() % batch);
        idx2[k] = static_cast<int64_t>(rng() % batch);
      }
      const msmix::MixInverseIndex want = msmix::build_inverse_index(idx1.data(), idx2.data(), batch, num_mix);
      ListStorage sorted(sort_capacity(2 * num_mix));
      SequentialExec exec{num_mix % 2 == 0 ? 64 : 512, num_mix % 3 == 0};
      sort_inverse_index(exec, idx1.data(), idx2.data(), num_mix, sorted.key.data(), sorted.flat.data());
      bool ok = true;
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t p = want.offsets[b]; p < want.offsets[b + 1]; ++p)
          ok = ok && sorted.flat[p] == want.entries[p] && sorted.key[p] == static_cast<uint64_t>(b);
      expect(ok, "sort_inverse_index: B " + std::to_string(batch) + ", K " + std::to_string(num_mix));
      ++cases;
    }
  }
  std::cout << "ok   the inverse index equals the CPU counting sort (" << cases << " cases)\n";
}

int main() {
  test_select_smallest();
  test_inverse_index();
  test_draw_matches_cpu_operator();
  test_split_sums();
  std::cout << (failures == 0 ? "all block-kernel tests passed" : "block-kernel tests failed") << "\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
