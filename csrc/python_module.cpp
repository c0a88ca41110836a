// The Python module msmix_ext._C: loading it registers the operators (the
// TORCH_LIBRARY blocks linked into it); its attributes say how it was built.
#include <pybind11/pybind11.h>

#ifndef MSMIX_VERSION
#define MSMIX_VERSION "0.0.0"
#endif

PYBIND11_MODULE(_C, module) {
  module.doc() = "msmix_ext build information; the operators live in torch.ops.msmix";
  module.attr("__version__") = MSMIX_VERSION;
#ifdef MSMIX_WITH_CUDA
  module.attr("cuda_compiled") = true;
#else
  module.attr("cuda_compiled") = false;
#endif
}
