// Host-side view of a [N, ...] tensor as N rows of one width, shared by the
// CPU and CUDA kernels (feature flattening is written once, here).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

namespace msmix {

// Elements per row of a [N, ...] tensor (from the shape, so that a tensor with
// zero rows still has its width).
inline int64_t row_width(const at::Tensor& t) {
  int64_t width = 1;
  for (int64_t d = 1; d < t.dim(); ++d) width *= t.size(d);
  return width;
}

// t's shape with `rows` rows.
inline std::vector<int64_t> with_rows(const at::Tensor& t, int64_t rows) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape[0] = rows;
  return shape;
}

// The rows of t, contiguous: t itself or a view when t already is, one copy
// otherwise. (A [N, width] tensor is returned as it is: a reshape call costs a
// dispatch, ~1 us, as much as small batches' row loops.)
inline at::Tensor contiguous_rows(const at::Tensor& t) {
  if (t.dim() == 2 && t.is_contiguous()) return t;
  return t.reshape({t.size(0), -1}).contiguous();
}

// t as [N, width] without a copy where its strides allow one: rows of stride
// row_stride whose elements lie next to each other (column stride 1), or are
// one value repeated along the row (column stride 0, as in the gradient of
// .sum() or .mean(), which autograd hands over expanded). Otherwise a copy.
inline at::Tensor strided_rows(const at::Tensor& t) {
  at::Tensor rows = t.dim() == 2 ? t : t.reshape({t.size(0), row_width(t)});
  if (rows.size(1) > 1 && rows.stride(1) != 0 && rows.stride(1) != 1) rows = rows.contiguous();
  return rows;
}

// A saved input of mix_backward [B, ...] must have the rows of its gradient.
inline void check_saved_rows(const at::Tensor& saved, const at::Tensor& grad, int64_t batch, int64_t width) {
  TORCH_CHECK(saved.scalar_type() == grad.scalar_type() && saved.dim() >= 1 && saved.size(0) == batch &&
                  row_width(saved) == width,
              "mix_backward: a saved input does not match its gradient's shape or dtype");
}

}  // namespace msmix
