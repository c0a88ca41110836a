// C++ test of the operators through the dispatcher, as a C++ user calls them:
// mixing against an ATen computation of design.md §6, and SASS pair validity.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <iostream>
#include <tuple>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
  failures += ok ? 0 : 1;
}

void test_mix() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("msmix::mix", "")
                .typed<std::tuple<std::vector<at::Tensor>, at::Tensor>(
                    at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    const at::Tensor&, const at::Tensor&)>();
  at::manual_seed(0);
  const std::vector<at::Tensor> feats = {at::randn({6, 4}, at::kDouble), at::randn({6, 3, 2}, at::kDouble)};
  const at::Tensor labels = at::randn({6}, at::kDouble);
  const at::Tensor idx1 = at::tensor(std::vector<int64_t>{0, 5, 2}, at::kLong);
  const at::Tensor idx2 = at::tensor(std::vector<int64_t>{3, 1, 4}, at::kLong);
  const at::Tensor lam = at::rand({2, 3}, at::kDouble);
  const at::Tensor lam_label = lam.mean(0);
  auto [out, out_labels] = op.call(feats, labels, idx1, idx2, lam, lam_label);
  bool ok = out.size() == 2;
  for (size_t m = 0; ok && m < 2; ++m) {
    const int64_t extra = feats[m].dim() - 1;
    at::Tensor r = lam[m];
    for (int64_t d = 0; d < extra; ++d) r = r.unsqueeze(-1);
    const at::Tensor mixed = r * feats[m].index_select(0, idx1) + (1 - r) * feats[m].index_select(0, idx2);
    ok = ok && at::allclose(out[m], at::cat({feats[m], mixed}));
  }
  const at::Tensor mixed_labels = lam_label * labels.index_select(0, idx1) + (1 - lam_label) * labels.index_select(0, idx2);
  ok = ok && at::allclose(out_labels, at::cat({labels, mixed_labels}));
  expect(ok, "msmix::mix matches cat(f, lam * f[idx1] + (1 - lam) * f[idx2])");
}

void test_sass_select() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("msmix::sass_select", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(at::TensorList, int64_t, double,
                                                                       const at::Tensor&, double)>();
  const std::vector<at::Tensor> feats = {at::randn({20, 8}), at::randn({20, 2, 3})};
  auto [idx1, idx2, lam0] = op.call(feats, 30, 0.4, at::tensor(int64_t{7}), 2.0);
  expect(idx1.size(0) == 30 && idx2.size(0) == 30 && lam0.size(0) == 30, "sass_select returns [K] tensors");
  expect(!(idx1 == idx2).any().item<bool>(), "sass_select never pairs a sample with itself");
  expect(((idx1 >= 0) & (idx1 < 20) & (idx2 >= 0) & (idx2 < 20)).all().item<bool>(), "indices lie in [0, B)");
  expect(((lam0 > 0) & (lam0 < 1)).all().item<bool>(), "lam0 lies in (0, 1)");
  auto [again1, again2, again_lam0] = op.call(feats, 30, 0.4, at::tensor(int64_t{7}), 2.0);
  expect(at::equal(idx1, again1) && at::equal(idx2, again2) && at::equal(lam0, again_lam0),
         "the same seed gives the same draw");
  bool threw = false;
  try {
    op.call({at::randn({1, 3})}, 2, 0.4, at::tensor(int64_t{0}), 2.0);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("at least 2 samples") != std::string::npos;
  }
  expect(threw, "B < 2 fails with a clear message");
}

}  // namespace

int main() {
  test_mix();
  test_sass_select();
  std::cout << (failures == 0 ? "all C++ tests passed" : "C++ tests failed") << "\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
