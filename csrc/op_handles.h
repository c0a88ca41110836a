// Typed dispatcher handles of the msmix operators, written once for the C++
// code that calls operators through the dispatcher: fused_mix composes
// sass_select and mix, and the autocast kernels re-dispatch every operator.
// The signatures mirror the schemas of csrc/msmix.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace msmix {

using SassResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using MixResult = std::tuple<std::vector<at::Tensor>, at::Tensor>;
using MixGrads = std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor>;
using FusedResult = std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                               at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using FusedGrads = std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor>;

using SimilaritySignature = at::Tensor(at::TensorList);
using SassSignature = SassResult(at::TensorList, int64_t, double, const at::Tensor&, double);
using MixSignature = MixResult(at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&);
using MixBackwardSignature = MixGrads(at::TensorList, const at::Tensor&, at::TensorList, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      std::array<bool, 4>);
using FusedSignature = FusedResult(at::TensorList, const at::Tensor&, const at::Tensor&, int64_t, double,
                                   const at::Tensor&, double);
using OptionalTensor = std::optional<at::Tensor>;
using FusedBackwardSignature = FusedGrads(at::TensorList, const at::Tensor&, const OptionalTensor&,
                                          const OptionalTensor&, const OptionalTensor&, const OptionalTensor&,
                                          at::TensorList, const at::Tensor&,
                                          const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, std::array<bool, 3>);

inline c10::OperatorHandle find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// Each handle is looked up once; the schemas are registered when the library loads.
inline const auto& similarity_op() {
  static const auto op = find_op("msmix::similarity").typed<SimilaritySignature>();
  return op;
}
inline const auto& sass_select_op() {
  static const auto op = find_op("msmix::sass_select").typed<SassSignature>();
  return op;
}
inline const auto& mix_op() {
  static const auto op = find_op("msmix::mix").typed<MixSignature>();
  return op;
}
inline const auto& mix_backward_op() {
  static const auto op = find_op("msmix::mix_backward").typed<MixBackwardSignature>();
  return op;
}
inline const auto& fused_mix_op() {
  static const auto op = find_op("msmix::fused_mix").typed<FusedSignature>();
  return op;
}
inline const auto& fused_mix_backward_op() {
  static const auto op = find_op("msmix::fused_mix_backward").typed<FusedBackwardSignature>();
  return op;
}

}  // namespace msmix
