// Fused per-modality mixing on the CPU (design.md §6): every output row is written
// once, straight from its source rows, and the backward gathers instead of
// scattering, so its sums run in a fixed order (deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../mix_math.h"
#include "../rows.h"
#include "row_loops.h"

namespace msmix {
namespace {

constexpr int64_t kGrainElements = 32768;

int64_t row_grain(int64_t width) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(width, 1)); }

void check_index_range(const at::Tensor& idx, const char* name, int64_t batch, const char* op) {
  const int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t k = 0; k < idx.numel(); ++k)
    TORCH_CHECK(p[k] >= 0 && p[k] < batch, op, ": ", name, "[", k, "] = ", p[k],
                " is out of range for a batch of B = ", batch);
}

// out[:B] = src, out[B + k] = r_k * src[i_k] + (1 - r_k) * src[j_k], rows of `width`.
template <typename scalar_t, typename ratio_t>
void mix_rows_forward(const scalar_t* src, scalar_t* out, const int64_t* idx1, const int64_t* idx2,
                      const ratio_t* ratio, int64_t batch, int64_t num_mix, int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, batch + num_mix, row_grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      scalar_t* dst = out + row * width;
      if (row < batch) {
        std::copy(src + row * width, src + (row + 1) * width, dst);
        continue;
      }
      const int64_t k = row - batch;
      mix_row<scalar_t, acc_t>(src + idx1[k] * width, src + idx2[k] * width, static_cast<acc_t>(ratio[k]), dst,
                               width);
    }
  });
}

// A gradient [B + K, width] read in place (rows.h strided_rows): rows of
// row_stride elements whose columns are contiguous, or one value repeated
// along each row (kBroadcast: column stride 0, the gradient of .sum()).
template <typename scalar_t, bool kBroadcast>
struct GradRows {
  const scalar_t* data;
  int64_t row_stride;
  const scalar_t* row(int64_t r) const { return data + r * row_stride; }
};

template <typename scalar_t, typename ratio_t, bool kBroadcast>
void mix_rows_backward(const GradRows<scalar_t, kBroadcast>& grad_out, scalar_t* grad_src,
                       const MixInverseIndex& inverse, const ratio_t* ratio, int64_t batch, int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, batch, row_grain(width), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kBroadcast ? 0 : width);  // source_row_grad sums a broadcast row without it
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = inverse.offsets[b];
      source_row_grad<scalar_t, ratio_t, acc_t, kBroadcast>(
          grad_out.row(b), grad_out.row(batch), grad_out.row_stride, inverse.entries.data() + first,
          inverse.offsets[b + 1] - first, ratio, acc.data(), grad_src + b * width, width);
    }
  });
}

// d r_k = < grad_out[B + k], src[i_k] - src[j_k] >
template <typename scalar_t, typename ratio_t, bool kBroadcast>
void mix_rows_ratio_grad(const GradRows<scalar_t, kBroadcast>& grad_out, const scalar_t* src, const int64_t* idx1,
                         const int64_t* idx2, ratio_t* grad_ratio, int64_t batch, int64_t num_mix, int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, num_mix, row_grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      grad_ratio[k] = static_cast<ratio_t>(ratio_row_grad<scalar_t, acc_t, kBroadcast>(
          grad_out.row(batch + k), src + idx1[k] * width, src + idx2[k] * width, width));
  });
}

// Row `row` of a contiguous [M, K] (or [K], row 0) ratio tensor, without a
// select op per modality (those cost more than small batches' mixing).
template <typename T>
const T* ratio_row(const at::Tensor& ratios, int64_t row) {
  return ratios.const_data_ptr<T>() + row * ratios.size(-1);
}

// Mixes one [B, ...] tensor with row `row` of the ratios (lam [M, K] or lam_label [K]).
at::Tensor mix_one(const at::Tensor& x, const at::Tensor& idx1, const at::Tensor& idx2,
                   const at::Tensor& ratios, int64_t row) {
  const at::Tensor src = x.contiguous();
  const int64_t batch = x.size(0), num_mix = idx1.size(0);
  at::Tensor out = at::empty(with_rows(x, batch + num_mix), src.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "mix", [&] {
    using scalar_data_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ratios.scalar_type(), "mix", [&] {
      mix_rows_forward<scalar_data_t, scalar_t>(src.data_ptr<scalar_data_t>(), out.data_ptr<scalar_data_t>(),
                                                idx1.data_ptr<int64_t>(), idx2.data_ptr<int64_t>(),
                                                ratio_row<scalar_t>(ratios, row), batch, num_mix, row_width(src));
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mix_forward_kernel(
    at::TensorList feats, const at::Tensor& labels, const at::Tensor& idx1, const at::Tensor& idx2,
    const at::Tensor& lam, const at::Tensor& lam_label) {
  check_mix_args(feats, labels, idx1, idx2, lam, lam_label, "mix");
  const int64_t batch = feats[0].size(0);
  const at::Tensor i1 = idx1.contiguous(), i2 = idx2.contiguous();
  check_index_range(i1, "idx1", batch, "mix");
  check_index_range(i2, "idx2", batch, "mix");
  const at::Tensor lam_c = lam.contiguous(), lam_label_c = lam_label.contiguous();
  std::vector<at::Tensor> out;
  for (size_t m = 0; m < feats.size(); ++m)
    out.push_back(mix_one(feats[m], i1, i2, lam_c, static_cast<int64_t>(m)));
  return {out, mix_one(labels, i1, i2, lam_label_c, 0)};
}

// Gradients of one mixed tensor, mixed with row `row` of `ratios`: into its source
// rows (*grad_x) and into row `row` of *grad_ratios (shaped like `ratios`).
void mix_one_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& idx1,
                      const at::Tensor& idx2, const at::Tensor& ratios, int64_t row,
                      const MixInverseIndex& inverse, at::Tensor* grad_x, at::Tensor* grad_ratios) {
  const at::Tensor g = strided_rows(grad_out);
  const int64_t num_mix = idx1.size(0), batch = g.size(0) - num_mix, width = g.size(1);
  if (grad_x != nullptr) *grad_x = at::empty(with_rows(grad_out, batch), grad_out.options());
  const at::Tensor src = grad_ratios != nullptr ? x.contiguous() : at::Tensor();
  if (grad_ratios != nullptr) check_saved_rows(src, grad_out, batch, width);
  const bool broadcast = width > 1 && g.stride(1) == 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mix_backward", [&] {
    using scalar_data_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ratios.scalar_type(), "mix_backward", [&] {
      auto run = [&](auto rows) {
        if (grad_x != nullptr)
          mix_rows_backward<scalar_data_t, scalar_t>(rows, grad_x->data_ptr<scalar_data_t>(), inverse,
                                                     ratio_row<scalar_t>(ratios, row), batch, width);
        if (grad_ratios != nullptr)
          mix_rows_ratio_grad<scalar_data_t, scalar_t>(rows, src.data_ptr<scalar_data_t>(),
                                                       idx1.data_ptr<int64_t>(), idx2.data_ptr<int64_t>(),
                                                       grad_ratios->data_ptr<scalar_t>() + row * num_mix, batch,
                                                       num_mix, width);
      };
      const scalar_data_t* data = g.data_ptr<scalar_data_t>();
      if (broadcast)
        run(GradRows<scalar_data_t, true>{data, g.stride(0)});
      else
        run(GradRows<scalar_data_t, false>{data, g.stride(0)});
    });
  });
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor> mix_backward_kernel(
    at::TensorList grad_feats_out, const at::Tensor& grad_labels_out, at::TensorList feats,
    const at::Tensor& labels, const at::Tensor& idx1, const at::Tensor& idx2, const at::Tensor& lam,
    const at::Tensor& lam_label, std::array<bool, 4> output_mask) {
  const auto [need_feats, need_labels, need_lam, need_lam_label] = output_mask;
  const int64_t batch = check_mix_backward_args(grad_feats_out, grad_labels_out, feats, labels, idx1, idx2, lam,
                                                lam_label, need_lam, need_lam_label);
  const int64_t num_mix = idx1.size(0), num_modalities = lam.size(0);
  const at::Tensor i1 = idx1.contiguous(), i2 = idx2.contiguous();
  check_index_range(i1, "idx1", batch, "mix_backward");
  check_index_range(i2, "idx2", batch, "mix_backward");
  const MixInverseIndex inverse = build_inverse_index(i1.data_ptr<int64_t>(), i2.data_ptr<int64_t>(), batch, num_mix);
  const at::Tensor lam_c = lam.contiguous(), lam_label_c = lam_label.contiguous();

  std::vector<at::Tensor> grad_feats;
  at::Tensor grad_lam = at::empty({need_lam ? num_modalities : 0, need_lam ? num_mix : 0}, lam.options());
  for (int64_t m = 0; m < num_modalities; ++m) {
    at::Tensor grad_x;
    mix_one_backward(grad_feats_out[m], need_lam ? feats[m] : at::Tensor(), i1, i2, lam_c, m, inverse,
                     need_feats ? &grad_x : nullptr, need_lam ? &grad_lam : nullptr);
    if (need_feats) grad_feats.push_back(grad_x);
  }
  at::Tensor grad_labels;  // allocated by mix_one_backward when needed, else [0]
  at::Tensor grad_lam_label = at::empty({need_lam_label ? num_mix : 0}, lam_label.options());
  if (need_labels || need_lam_label)
    mix_one_backward(grad_labels_out, labels, i1, i2, lam_label_c, 0, inverse,
                     need_labels ? &grad_labels : nullptr, need_lam_label ? &grad_lam_label : nullptr);
  if (!need_labels) grad_labels = at::empty({0}, grad_labels_out.options());
  return {grad_feats, grad_labels, grad_lam, grad_lam_label};
}

}  // namespace

TORCH_LIBRARY_IMPL(msmix, CPU, m) {
  m.impl("mix", &mix_forward_kernel);
  m.impl("mix_backward", &mix_backward_kernel);
}

}  // namespace msmix
