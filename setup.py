"""Builds gdig_ext._C (CPU always; CUDA when possible) and packages gdig_ext + gdig.

GDIG_CUDA=auto (default): compile the CUDA sources when the installed torch is a
CUDA build and nvcc is found, even with no GPU present. GDIG_CUDA=1 forces them
(failing loudly if impossible); GDIG_CUDA=0 skips them.
GDIG_CUDA_ARCH: TORCH_CUDA_ARCH_LIST to compile for (default "8.0;9.0+PTX").
GDIG_DEBUG=1: -O0 -g instead of -O3.
"""

from __future__ import annotations

import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    mode = os.environ.get("GDIG_CUDA", "auto").lower()
    if mode in ("0", "off", "false", "no"):
        return False
    possible = torch.version.cuda is not None and _nvcc() is not None
    if mode in ("1", "on", "true", "yes"):
        if not possible:
            raise SystemExit(
                f"GDIG_CUDA=1 but cannot build CUDA: torch {torch.__version__} "
                f"(CUDA {torch.version.cuda}), nvcc {'found' if _nvcc() else 'not found'}"
            )
        return True
    return possible


def _cuda_home() -> str | None:
    """The CUDA toolkit folder: one holding bin/nvcc and include/cuda_runtime.h.

    A bare `nvcc` on PATH may be a wrapper script (here /usr/local/bin/nvcc), so the
    folder above it is not trusted; torch's own guess picks /usr/local for the same reason.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if (
            home
            and os.path.exists(os.path.join(home, "bin", "nvcc"))
            and os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))
        ):
            return home
    return None


def _nvcc() -> str | None:
    home = _cuda_home()
    return os.path.join(home, "bin", "nvcc") if home else None


def _cuda_include_dirs() -> list[str]:
    # cuBLAS/cuSPARSE headers of pip-installed torch live in its nvidia/* wheels.
    import site

    dirs = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += glob.glob(os.path.join(sp, "nvidia", "*", "include"))
    return sorted(set(dirs))


def _extension():
    debug = os.environ.get("GDIG_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-fopenmp"]  # the C++ standard is left to torch (C++17 or C++20 by version)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if _want_cuda():
        # torch.utils.cpp_extension read CUDA_HOME at import; point it at the real toolkit.
        import torch.utils.cpp_extension as cpp_ext

        os.environ["CUDA_HOME"] = cpp_ext.CUDA_HOME = _cuda_home()
        os.environ.setdefault(
            "TORCH_CUDA_ARCH_LIST", os.environ.get("GDIG_CUDA_ARCH", "8.0;9.0+PTX")
        )
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        return CUDAExtension(
            "gdig_ext._C",
            sources,
            include_dirs=[os.path.join(HERE, "csrc")] + _cuda_include_dirs(),
            define_macros=[("GDIG_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": opt + ["--expt-relaxed-constexpr"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "gdig_ext._C",
        sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="gdig",
    version="0.1.0",
    description="G-DIG data selection for MT fine-tuning: EK-FAC influence + gradient diversity",
    packages=find_packages(include=["gdig_ext"]) + find_packages("python"),
    package_dir={"gdig_ext": "gdig_ext", "": "python"},
    package_data={"gdig": ["data/demo/*", "report/*.css"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",
        "numpy",
        "transformers>=4.45",
        "accelerate",  # transformers needs it to load GGUF weights
        "gguf",
        "safetensors",
        "faiss-cpu",
        "tqdm",
        "pyyaml",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark", "ruff", "scipy"]},
    entry_points={"console_scripts": ["gdig=gdig.cli:main"]},
)
