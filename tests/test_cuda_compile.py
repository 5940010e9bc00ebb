"""Compile checks of the CUDA sources, no GPU needed.

* every ``cuda/*.cu`` compiles to PTX for sm_80 and sm_90 with ``-Werror all-warnings`` (nvcc);
* the PTX has an ``.entry`` for every kernel the backend launches (``cuda_kernels.KERNELS`` x float/double);
* NVRTC, the compiler CuPy uses at run time, compiles the source with the backend's name expressions
  (runs where ``libnvrtc`` can be found, e.g. with ``nvidia-cuda-nvrtc`` installed);
* the package ships the source, and nothing here imports CuPy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lotsim.dynamics import cuda_kernels

pytestmark = pytest.mark.nvcc

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    """ptx(source, arch) -> PTX text, compiled once per (source, arch) in this module."""
    out_dir = tmp_path_factory.mktemp("ptx")

    @functools.cache
    def compile_ptx(path: Path, arch: str) -> str:
        out = out_dir / f"{path.stem}.{arch}.ptx"
        result = subprocess.run(["nvcc", "--ptx", "-std=c++17", f"-arch={arch}", "-Werror", "all-warnings",
                                 str(path), "-o", str(out)], capture_output=True, text=True)
        assert result.returncode == 0, f"nvcc failed on {path.name} ({arch}):\n{result.stderr}"
        return out.read_text()

    return compile_ptx


def _entries(ptx: str) -> set[str]:
    """Template kernels ``name<float>`` / ``name<double>`` from the mangled PTX entry names."""
    names = set()
    for mangled in re.findall(r"\.entry\s+(\w+)", ptx):
        match = re.match(r"_Z(\d+)(\w+)", mangled)
        if not match:
            names.add(mangled)  # extern "C"
            continue
        length = int(match.group(1))
        name, rest = match.group(2)[:length], match.group(2)[length:]
        real = {"IfE": "float", "IdE": "double"}.get(rest[:3])
        names.add(f"{name}<{real}>" if real else name)
    return names


def test_there_are_sources():
    assert CUDA_DIR / "kuramoto.cu" in SOURCES


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_sources_compile_without_warnings(ptx, source, arch):
    assert ".entry" in ptx(source, arch)


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_ptx_has_every_kernel_the_backend_launches(ptx, arch):
    entries = _entries(ptx(CUDA_DIR / "kuramoto.cu", arch))
    missing = set(cuda_kernels.NAME_EXPRESSIONS) - entries
    assert not missing, f"kernels the backend calls but the PTX lacks: {sorted(missing)}"
    assert len(cuda_kernels.NAME_EXPRESSIONS) == 2 * len(cuda_kernels.KERNELS)


def test_explicit_instantiations_match_the_kernel_list():
    source = (CUDA_DIR / "kuramoto.cu").read_text()
    instantiated = re.findall(r"^LOTSIM_INSTANTIATE\((\w+)\)", source, flags=re.MULTILINE)
    assert instantiated == list(cuda_kernels.KERNELS)
    emulated = re.findall(r"^\s*LOTSIM_REGISTER\((\w+)\)", (CUDA_DIR / "host_emulation.cpp").read_text(),
                          flags=re.MULTILINE)
    assert emulated == list(cuda_kernels.KERNELS)
    assert f"#define LOTSIM_MAX_HARMONICS {cuda_kernels.MAX_HARMONICS}\n" in source


def _find_nvrtc() -> str | None:
    candidates = [os.environ.get("LOTSIM_NVRTC"), ctypes.util.find_library("nvrtc")]
    try:  # shipped with CuPy 14; finds pip-installed NVIDIA libraries and the CUDA toolkit
        from cuda.pathfinder import load_nvidia_dynamic_lib
        candidates.append(load_nvidia_dynamic_lib("nvrtc").abs_path)
    except Exception:  # not installed, or no NVRTC anywhere
        pass
    try:  # the nvidia-cuda-nvrtc wheel (in the dev extra): site-packages/nvidia/cu*/lib/libnvrtc.so.*
        import nvidia
        candidates += sorted(str(p) for root in nvidia.__path__ for p in Path(root).glob("cu*/lib/libnvrtc.so.*")
                             if "builtins" not in p.name)
    except ImportError:
        pass
    return next((c for c in candidates if c), None)


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_nvrtc_compiles_the_name_expressions(arch):
    """The run-time path of the backend: NVRTC with name expressions, as cupy.RawModule does it."""
    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set LOTSIM_NVRTC)")
    lib = ctypes.CDLL(path)
    program = ctypes.c_void_p()
    source = cuda_kernels.read_source().encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(program), source, b"kuramoto.cu", 0, None, None) == 0
    try:
        for name in cuda_kernels.NAME_EXPRESSIONS:
            assert lib.nvrtcAddNameExpression(program, name.encode()) == 0
        options = [o.encode() for o in (*cuda_kernels.COMPILE_OPTIONS, f"--gpu-architecture={arch}")]
        rc = lib.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        assert rc == 0, f"NVRTC failed:\n{log.value.decode()}"
        assert not log.value.strip(), f"NVRTC warnings:\n{log.value.decode()}"
        for name in cuda_kernels.NAME_EXPRESSIONS:
            lowered = ctypes.c_char_p()
            assert lib.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(lowered)) == 0
            assert lowered.value.startswith(b"_Z")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def test_the_package_ships_the_source():
    assert cuda_kernels.read_source() == (CUDA_DIR / "kuramoto.cu").read_text()


def test_top_level_cuda_is_not_a_regular_package():
    # `cuda` is a namespace package of NVIDIA's (cuda.pathfinder, cuda.bindings): an __init__.py in
    # the repository's cuda/ would shadow it for anything run from the repository root, CuPy included.
    assert not (CUDA_DIR / "__init__.py").exists()


def test_nothing_on_the_cpu_path_imports_cupy():
    code = ("import sys, lotsim.dynamics, lotsim.dynamics.cuda_kernels, lotsim.dynamics.backends; "
            "assert 'cupy' not in sys.modules, 'cupy was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
