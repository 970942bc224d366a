"""Build the fcn_kernels._C extension.

CUDA sources are compiled when a CUDA toolkit is found (CUDA_HOME, nvcc on PATH or
/usr/local/cuda) and torch is a CUDA build; otherwise a CPU-only extension is built.
Force either with FCN_KERNELS_CUDA=1 / FCN_KERNELS_CUDA=0.
"""

import glob
import os
import sys

from setuptools import setup

# torch locates the toolkit from `nvcc` on PATH first; a /usr/local/bin/nvcc shim
# would make it look for libcudart under /usr/local/lib. Prefer the real toolkit.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # typically pip's isolated build environment
    sys.exit(
        "fcn-kernels: torch is not importable in this build environment.\n"
        "The extension must be compiled against the torch that will run it. Run:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation -e .\n"
        "(or simply `make build`, which does both in .venv)."
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    flag = os.environ.get("FCN_KERNELS_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return False
    found = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if flag in ("1", "true", "yes") and not found:
        sys.exit("FCN_KERNELS_CUDA=1 but no CUDA toolkit (CUDA_HOME/nvcc) or a CPU-only torch")
    return found


def extension():
    # One folder per operator (csrc/<op>/): its CPU kernels (cpu*.cpp), its GPU code
    # emulated on the CPU (emu.cpp, always built) and for CUDA (cuda.cu), autocast.
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    # The C++ standard is left to torch (2.14 needs C++20). -fopenmp: at::parallel_for
    # is inline in torch's headers and runs serially unless _OPENMP is defined; the
    # libgomp it links is torch's own (same soname, already loaded by `import torch`).
    cxx = ["-O3", "-fopenmp"]
    link = ["-fopenmp"]
    if not want_cuda():
        return cpp_extension.CppExtension(
            "fcn_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
            include_dirs=[os.path.join(HERE, "csrc")],
            py_limited_api=False,
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU to ask: torch would otherwise compile for every architecture it
        # knows (slow). Hopper (H100/H200) plus PTX, which the driver JIT-compiles
        # for newer GPUs. Set TORCH_CUDA_ARCH_LIST yourself for other cards,
        # e.g. "8.0;8.6" for A100/RTX 30xx.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0+PTX"
        print("fcn-kernels: no GPU visible, TORCH_CUDA_ARCH_LIST defaults to 9.0+PTX")
    sources += sorted(glob.glob("csrc/*/*.cu"))
    return cpp_extension.CUDAExtension(
        "fcn_kernels._C",
        sources,
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        extra_link_args=link,
        include_dirs=[os.path.join(HERE, "csrc")],
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
