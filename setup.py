"""Builds msmix_ext._C against the installed torch.

Build switches (environment variables):
  MSMIX_FORCE_CUDA=1   build the CUDA kernels or fail (no silent CPU-only build)
  MSMIX_SKIP_CUDA=1    build the CPU kernels only, even with a CUDA torch
  TORCH_CUDA_ARCH_LIST overrides the default architectures "8.0;9.0+PTX"
  MSMIX_DEBUG=1        -O0 -g

Build with `pip install --no-build-isolation -e .`: an isolated build would
download a second, multi-GB torch just to compile against.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Sources and flags: csrc/build.json (CMakeLists.txt reads it too). Version: msmix_ext/__init__.py.
with open(os.path.join(ROOT, "csrc", "build.json")) as _f:
    BUILD = json.load(_f)
with open(os.path.join(ROOT, "msmix_ext", "__init__.py")) as _f:
    VERSION = re.search(r'^__version__ = "([^"]+)"$', _f.read(), re.M).group(1)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _toolkit_behind_nvcc() -> str | None:
    """The CUDA toolkit that the `nvcc` on PATH belongs to.

    Where `nvcc` is a wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`),
    torch's guess (the parent of the script's folder) is wrong, so follow the
    path the script executes.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    with open(nvcc, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"#!"):
        match = re.search(rb"(/\S+)/bin/nvcc\b", head)
        if match:
            return match.group(1).decode()
    return os.path.dirname(os.path.dirname(nvcc))


def _configure_cuda_home() -> None:
    # torch.utils.cpp_extension reads CUDA_HOME when imported: set it first.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    toolkit = _toolkit_behind_nvcc()
    if toolkit and os.path.exists(os.path.join(toolkit, "bin", "nvcc")):
        os.environ["CUDA_HOME"] = toolkit


_configure_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda() -> bool:
    force, skip = _flag("MSMIX_FORCE_CUDA"), _flag("MSMIX_SKIP_CUDA")
    if force and skip:
        sys.exit("setup.py: MSMIX_FORCE_CUDA and MSMIX_SKIP_CUDA are both set; choose one")
    if skip:
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"the installed torch {torch.__version__} is a CPU build")
    if cpp_extension.CUDA_HOME is None:
        reasons.append("no CUDA toolkit was found (set CUDA_HOME or put nvcc on PATH)")
    if reasons:
        if force:
            sys.exit("setup.py: MSMIX_FORCE_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(reasons))
        print("setup.py: building the CPU kernels only: " + "; ".join(reasons), file=sys.stderr)
        return False
    return True


def _extension():
    with_cuda = _want_cuda()
    sources = sorted(p for pattern in BUILD["cpu_sources"] for p in glob.glob(pattern))
    opt = BUILD["debug"] if _flag("MSMIX_DEBUG") else BUILD["optimise"]
    define_macros = [("MSMIX_VERSION", f'"{VERSION}"')]
    # -fopenmp: at::parallel_for is header code that runs serially unless _OPENMP is defined;
    # the symbols resolve to the libgomp torch already loaded. It also enables `omp simd`.
    extra_compile_args = {"cxx": opt + BUILD["cxx_flags"]}
    extra_link_args = BUILD["link_flags"]
    if not with_cuda:
        return cpp_extension.CppExtension(
            "msmix_ext._C", sources, define_macros=define_macros, extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    print(f"setup.py: building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} "
          f"with {cpp_extension.CUDA_HOME}", file=sys.stderr)
    sources += sorted(p for pattern in BUILD["cuda_sources"] for p in glob.glob(pattern))
    define_macros.append(("MSMIX_WITH_CUDA", None))
    extra_compile_args["nvcc"] = opt + BUILD["nvcc_flags"]
    return cpp_extension.CUDAExtension(
        "msmix_ext._C", sources, define_macros=define_macros, extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )


setup(
    version=VERSION,
    packages=find_packages(include=["msmix_ext", "msmix_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
