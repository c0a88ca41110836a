// Mixing ratios of fused_mix on CUDA (design.md §3, 5), the computation of
// csrc/cpu/ratio_kernel.cpp (the same ratio_math.h, the same order of sums, so
// the same bits). The work is O(M (B + K)) flops: one block, one thread per
// modality walking its row serially, which keeps every sum in a fixed order
// (deterministic) at the cost of one launch per call. The forward also copies
// the picked labels labels[idx1], labels[idx2]. Launches: forward 1 (+1 cast
// of lam0 when the intensities are not in lam0's dtype); backward 1 for the
// intensities, 1 for the labels.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../checks.h"
#include "../fused.h"
#include "../ratio_math.h"
#include "../rows.h"

namespace msmix {
namespace {

constexpr int kRatioThreads = 32;

template <typename scalar_t>
__global__ void mix_ratios_forward_kernel(const scalar_t* intensities, const int64_t* idx1, const int64_t* idx2,
                                          const scalar_t* lam0, scalar_t* lam, scalar_t* lam_label,
                                          int64_t num_modalities, int64_t batch, int64_t num_mix,
                                          PickedLabels picked) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t k = threadIdx.x; k < num_mix; k += blockDim.x) copy_picked_labels(picked, idx1, idx2, k);
  for (int64_t m = threadIdx.x; m < num_modalities; m += blockDim.x) {
    const scalar_t* row = intensities + m * batch;
    const auto bounds = weight_bounds<scalar_t, acc_t>(row, batch);
    for (int64_t k = 0; k < num_mix; ++k)
      lam[m * num_mix + k] =
          static_cast<scalar_t>(pair_ratio<scalar_t>(row, idx1[k], idx2[k], static_cast<acc_t>(lam0[k]), bounds));
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < num_mix; k += blockDim.x) {
    acc_t sum = 0;
    for (int64_t m = 0; m < num_modalities; ++m) sum += static_cast<acc_t>(lam[m * num_mix + k]);
    lam_label[k] = static_cast<scalar_t>(sum / static_cast<acc_t>(num_modalities));
  }
}

// `work` holds 3 * batch accumulators per modality (intensity_grad_row's).
template <typename scalar_t>
__global__ void mix_ratios_backward_kernel(const scalar_t* grad_lam, const scalar_t* grad_lam_label,
                                           const scalar_t* intensities, const int64_t* idx1,
                                           const int64_t* idx2, scalar_t* grad_intensities,
                                           at::opmath_type<scalar_t>* work, int64_t num_modalities,
                                           int64_t batch, int64_t num_mix) {
  for (int64_t m = threadIdx.x; m < num_modalities; m += blockDim.x)
    intensity_grad_row<scalar_t>(intensities + m * batch, grad_lam + m * num_mix, grad_lam_label, idx1, idx2,
                                 num_modalities, batch, num_mix, work + 3 * m * batch,
                                 grad_intensities + m * batch);
}

// One thread for all of it: k order, as on the CPU.
template <typename scalar_t>
__global__ void add_picked_label_grads_kernel(scalar_t* grad_labels, const scalar_t* grad1, const scalar_t* grad2,
                                              const int64_t* idx1, const int64_t* idx2, int64_t num_mix) {
  add_picked_label_grads<scalar_t>(grad_labels, grad1, grad2, idx1, idx2, num_mix);
}

}  // namespace

MixRatios mix_ratios_cuda(const at::Tensor& intensities, const at::Tensor& labels, const at::Tensor& idx1,
                          const at::Tensor& idx2, const at::Tensor& lam0) {
  const c10::cuda::CUDAGuard guard(intensities.device());
  const at::Tensor source = intensities.contiguous();
  const at::Tensor base = in_dtype(lam0, source.scalar_type()).contiguous();
  const at::Tensor i1 = idx1.contiguous(), i2 = idx2.contiguous();
  const at::Tensor label_rows = labels.contiguous();
  const int64_t num_modalities = source.size(0), batch = source.size(1), num_mix = idx1.size(0);
  at::Tensor lam = at::empty({num_modalities, num_mix}, source.options());
  at::Tensor lam_label = at::empty({num_mix}, source.options());
  at::Tensor labels1 = at::empty(with_rows(labels, num_mix), labels.options());
  at::Tensor labels2 = at::empty_like(labels1);
  if (num_mix == 0 || num_modalities == 0) return {lam, lam_label, labels1, labels2};
  const PickedLabels picked = picked_labels(label_rows, labels1, labels2);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, source.scalar_type(), "mix_ratios", [&] {
    mix_ratios_forward_kernel<scalar_t><<<1, kRatioThreads, 0, stream>>>(
        source.data_ptr<scalar_t>(), i1.data_ptr<int64_t>(), i2.data_ptr<int64_t>(), base.data_ptr<scalar_t>(),
        lam.data_ptr<scalar_t>(), lam_label.data_ptr<scalar_t>(), num_modalities, batch, num_mix, picked);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {lam, lam_label, labels1, labels2};
}

at::Tensor mix_ratios_backward_cuda(const at::Tensor& grad_lam, const at::Tensor& grad_lam_label,
                                    const at::Tensor& intensities, const at::Tensor& idx1,
                                    const at::Tensor& idx2) {
  const c10::cuda::CUDAGuard guard(intensities.device());
  const at::Tensor source = intensities.contiguous();
  const at::Tensor g_lam = in_dtype(grad_lam, source.scalar_type()).contiguous();
  const at::Tensor g_label = in_dtype(grad_lam_label, source.scalar_type()).contiguous();
  const at::Tensor i1 = idx1.contiguous(), i2 = idx2.contiguous();
  at::Tensor grad = at::empty_like(source);
  if (source.numel() == 0) return grad;
  at::Tensor work = at::empty({3 * source.numel()}, source.options().dtype(accumulate_type(source.scalar_type())));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, source.scalar_type(), "mix_ratios_backward", [&] {
    mix_ratios_backward_kernel<scalar_t><<<1, kRatioThreads, 0, stream>>>(
        g_lam.data_ptr<scalar_t>(), g_label.data_ptr<scalar_t>(), source.data_ptr<scalar_t>(),
        i1.data_ptr<int64_t>(), i2.data_ptr<int64_t>(), grad.data_ptr<scalar_t>(),
        work.data_ptr<at::opmath_type<scalar_t>>(), source.size(0), source.size(1), idx1.size(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

void add_picked_label_grads_cuda(at::Tensor& grad_labels, const at::Tensor& grad_labels1,
                                 const at::Tensor& grad_labels2, const at::Tensor& idx1,
                                 const at::Tensor& idx2) {
  const c10::cuda::CUDAGuard guard(grad_labels.device());
  const at::Tensor g1 = in_dtype(grad_labels1, grad_labels.scalar_type()).contiguous();
  const at::Tensor g2 = in_dtype(grad_labels2, grad_labels.scalar_type()).contiguous();
  const at::Tensor i1 = idx1.contiguous(), i2 = idx2.contiguous();
  if (idx1.size(0) == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_labels.scalar_type(), "fused_mix_backward", [&] {
    add_picked_label_grads_kernel<scalar_t><<<1, 1, 0, stream>>>(grad_labels.data_ptr<scalar_t>(),
                                                                g1.data_ptr<scalar_t>(), g2.data_ptr<scalar_t>(),
                                                                i1.data_ptr<int64_t>(), i2.data_ptr<int64_t>(),
                                                                idx1.size(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace msmix
