"""Every CUDA kernel builds for sm_80 and sm_90, float32 code has no double arithmetic, and the
same source builds and runs as host C++ (gpuperf.cuda.host).

nvcc is needed for the PTX tests (no GPU is): they skip without it, except in CI (CI=true),
where a missing nvcc fails. The register/spill table is printed (``pytest -s``) and is what
``bench/bench_fit.py`` records.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpuperf.fit  # noqa: F401  (the fit models register lm_fit<T, Model> with the catalog)
from gpuperf.cuda import host, nvcc, signature
from gpuperf.cuda.catalog import kernel_catalog
from gpuperf.cuda.source import kernel_dir, read_kernel

ARCHS = ("sm_80", "sm_90")
CATALOG = kernel_catalog()


def _need_nvcc() -> None:
    if nvcc.find_nvcc() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("nvcc is required in CI (kernels must compile for sm_80/sm_90)")
        pytest.skip("nvcc not found (CUDA toolkit absent); kernel compilation not checked")


def _need_cxx() -> None:
    if host.find_cxx() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("g++ is required in CI (kernels are tested through their host build)")
        pytest.skip("no host C++ compiler (g++)")


def test_every_kernel_file_is_catalogued():
    files = sorted(p.relative_to(kernel_dir()).as_posix() for p in kernel_dir().rglob("*.cu"))
    assert files, "no kernel files found"
    missing = [f for f in files if f not in CATALOG]
    assert not missing, f"add these kernel files to gpuperf/cuda/catalog.py: {missing}"
    stale = [f for f in CATALOG if f not in files]
    assert not stale, f"catalogue lists files that do not exist: {stale}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("relpath", sorted(CATALOG))
def test_kernel_compiles_and_float32_has_no_f64(relpath, arch):
    _need_nvcc()
    build = CATALOG[relpath]
    if build.plain:
        ptx = nvcc.compile_kernel(relpath, arch, build.defines, (), build.includes)
        if build.float32_only:
            assert nvcc.f64_lines(ptx) == []
        return
    assert build.float32 or build.float64, f"{relpath}: no instantiations declared"
    if build.float32:
        ptx32 = nvcc.compile_kernel(relpath, arch, build.defines, build.float32, build.includes)
        assert ptx32.count(".entry") == len(build.float32)
        bad = nvcc.f64_lines(ptx32)
        assert bad == [], f"{relpath} float32 instantiations use doubles:\n" + "\n".join(bad[:20])
    if build.float64:
        ptx64 = nvcc.compile_kernel(relpath, arch, build.defines, build.float64, build.includes)
        assert ptx64.count(".entry") == len(build.float64)
        assert nvcc.f64_lines(ptx64), "float64 instantiations should use .f64 (sanity of the lint)"


def test_resource_table_no_spills():
    _need_nvcc()
    rows = nvcc.resource_table(ARCHS)
    print("\n" + nvcc.format_resource_table(rows))
    n_expected = sum(len(b.float32) + len(b.float64) for b in CATALOG.values()) * len(ARCHS)
    assert len(rows) >= n_expected
    assert all(r.registers > 0 for r in rows)
    spilled = [
        r for r in rows if "float" in r.kernel and "double" not in r.kernel and r.spill_stores
    ]
    assert not spilled, f"float32 kernels spill registers: {spilled}"


def test_catalog_lists_every_model_instantiation():
    from gpuperf.fit.models import MODELS

    fit = CATALOG["fit/lm_fit.cu"]
    assert set(fit.float32) == {f"lm_fit<float, {m.cuda_struct}>" for m in MODELS.values()}
    assert set(fit.float64) == {f"lm_fit<double, {m.cuda_struct}>" for m in MODELS.values()}


def test_stored_signatures_are_the_compiled_ones():
    """gpuperf/cuda/signatures.json (what launches bind to) equals the g++ build's types."""
    _need_cxx()
    compiled = {s.expr: s for s in signature.catalog_signatures()}
    SIGNATURES = signature.stored_signatures()  # noqa: N806

    assert set(compiled) == set(SIGNATURES), "run python bench/update_kernel_signatures.py"
    for expr, sig in compiled.items():
        assert signature.signature(expr) == sig, f"{expr}: run bench/update_kernel_signatures.py"


@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_demangled_signatures_match(arch):
    """The device build's symbols (demangled) have the stored parameter types, in order."""
    _need_nvcc()
    seen = 0
    for relpath, build in CATALOG.items():
        exprs = (*build.float32, *build.float64)
        for r in nvcc.compile_kernel(
            relpath, arch, build.defines, exprs, build.includes, output="resources"
        ):
            head, _, rest = r.kernel.partition("(")
            expr = head.replace("void ", "", 1).strip()
            types = [signature.normalize_ctype(t) for t in rest.rstrip(")").split(",")]
            assert [p.ctype for p in signature.signature(expr).params] == types, expr
            seen += 1
    assert seen == sum(len(b.float32) + len(b.float64) for b in CATALOG.values())


def test_signature_bind_converts_and_checks():
    sig = signature.signature("osvd_select<float>")
    good = {p.name: (np.zeros(4, p.dtype) if p.is_pointer else 1) for p in sig.params}
    args = sig.bind(good)
    assert [type(a) for a in args if not isinstance(a, np.ndarray)] == [
        np.int64, np.int32, np.int32, np.int32, np.int64, np.float32,
    ]  # fmt: skip
    with pytest.raises(signature.SignatureError, match="missing"):
        sig.bind({k: v for k, v in good.items() if k != "n_pad"})
    with pytest.raises(signature.SignatureError, match="float32 data"):
        sig.bind(good, coef=np.zeros(4))
    with pytest.raises(signature.SignatureError, match="C-contiguous"):
        sig.bind(good, coef=np.zeros((4, 4), np.float32)[:, 0])
    with pytest.raises(signature.SignatureError, match="does not fit"):
        sig.bind(good, n_pad=2**40)
    with pytest.raises(signature.SignatureError, match="np.int32 scalar"):
        sig.check(tuple(int(a) if isinstance(a, np.int32) else a for a in args))


def test_parse_param_names():
    src = (
        "template <typename T>\n__global__ void k(const T* __restrict__ a, // x\n int n, T* out) {}"
    )
    assert signature.parse_param_names(src, "k") == ("a", "n", "out")


BAD_KERNEL = """
#include "common.cuh"
__global__ void half_it(float* v, int n) {
    const long long i = GP_GLOBAL_INDEX;
    // 0.5 is a double literal: v + 0.5 is computed in double. (v * 0.5 alone would not show:
    // scaling by a power of two is exact, and nvcc folds it back to float.)
    if (i < n) v[i] = (v[i] + 0.5) * v[i];
}
"""
GOOD_KERNEL = BAD_KERNEL.replace("0.5)", "0.5f)")


def test_f64_lint_catches_double_literal():
    _need_nvcc()
    assert nvcc.f64_lines(nvcc.compile_kernel(BAD_KERNEL, "sm_80")), "lint missed a 0.5 literal"
    assert nvcc.f64_lines(nvcc.compile_kernel(GOOD_KERNEL, "sm_80")) == []


def test_f64_lint_ignores_register_names_and_comments():
    ptx = "\n".join(
        [
            "\tmov.f32 \t%f64, 0f3F000000;",
            "\t// add.f64 in a comment",
            ".visible .entry k(",
            "\tcvt.f64.f32 \t%fd1, %f1;",
        ]
    )
    assert nvcc.f64_lines(ptx) == ["cvt.f64.f32 \t%fd1, %f1;"]


def test_parse_ptxas_log():
    log = (
        "ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1kPf\n"
        "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 0 barriers\n"
    )
    (row,) = nvcc.parse_ptxas_log(log)
    assert (row.arch, row.registers, row.spill_stores, row.spill_loads, row.stack_bytes) == (
        "sm_90",
        40,
        4,
        4,
        8,
    )


# ---------------------------------------------------------------------------- host C++ build
INDEX_KERNEL = """
template <typename T>
__global__ void write_index(long long n, T scale, T* out, int* block_of, int* thread_of) {
    const long long i = GP_GLOBAL_INDEX;
    if (i >= n) return;
    out[i] = scale * T(i);
    block_of[i] = (int)blockIdx.x;
    thread_of[i] = (int)threadIdx.x;
}
"""


@pytest.mark.parametrize("n_threads", [1, 3])
def test_host_build_runs_kernel_with_cuda_indexing(n_threads):
    _need_cxx()
    launcher = host.HostLauncher(
        "write_index_f32",
        "write_index<float>",
        (
            ("long long", "n"),
            ("float", "scale"),
            ("float*", "out"),
            ("int*", "block_of"),
            ("int*", "thread_of"),
        ),
    )
    lib = host.build_host_library(INDEX_KERNEL, launchers=[launcher])
    n, block = 1000, 128  # n not a multiple of the block: the guard must hold
    out = np.full(n + 5, -1.0, dtype=np.float32)
    blk = np.zeros(n + 5, dtype=np.int32)
    thr = np.zeros(n + 5, dtype=np.int32)
    grid = -(-n // block)
    lib.launch("write_index_f32", grid, block, (n, 2.0, out, blk, thr), n_threads=n_threads)
    i = np.arange(n)
    np.testing.assert_array_equal(out[:n], 2.0 * i)
    np.testing.assert_array_equal(blk[:n], i // block)
    np.testing.assert_array_equal(thr[:n], i % block)
    assert (out[n:] == -1).all()
    # cached: the second build is the same object, no compiler run
    assert host.build_host_library(INDEX_KERNEL, launchers=[launcher]) is lib


def test_host_launcher_checks_arguments():
    _need_cxx()
    launcher = host.HostLauncher(
        "write_index_f64",
        "write_index<double>",
        (
            ("long long", "n"),
            ("double", "scale"),
            ("double*", "out"),
            ("int*", "block_of"),
            ("int*", "thread_of"),
        ),
    )
    lib = host.build_host_library(INDEX_KERNEL, launchers=[launcher])
    out = np.zeros((4, 4))[:, 0]  # not contiguous
    z = np.zeros(4, dtype=np.int32)
    with pytest.raises(host.HostBuildError, match="C-contiguous"):
        lib.launch("write_index_f64", 1, 4, (4, 1.0, out, z, z))
    with pytest.raises(host.HostBuildError, match="takes 5 arguments"):
        lib.launch("write_index_f64", 1, 4, (4, 1.0))


@pytest.mark.parametrize("relpath", sorted(CATALOG))
def test_every_kernel_builds_as_host_cpp(relpath):
    _need_cxx()
    build = CATALOG[relpath]
    exprs = (*build.float32, *build.float64)
    code = "".join(f'#include "{h}"\n' for h in build.includes)
    code += f'#include "{(kernel_dir() / relpath).as_posix()}"\n'
    code += "".join(f"static void* gp_inst_{i} = (void*)&{e};\n" for i, e in enumerate(exprs))
    lib = host.build_host_library(code, defines=build.defines)
    assert lib.path.is_file()


def test_read_kernel_and_errors():
    assert "GP_HD" in read_kernel("common.cuh")
    with pytest.raises(Exception, match="not found"):
        read_kernel("no/such.cu")


def test_cubin_builds():
    _need_nvcc()
    assert len(nvcc.compile_kernel(GOOD_KERNEL, "sm_90", output="cubin")) > 0


@pytest.mark.gpu
def test_get_module_compiles_once_per_device():
    from gpuperf.cuda.source import get_module

    src = '#include "common.cuh"\n' + INDEX_KERNEL
    a = get_module("test/write_index", src, ["write_index<float>"])
    b = get_module("test/write_index", src, ["write_index<float>"])
    assert a is b
    import cupy

    n = 1000
    out = cupy.zeros(n, dtype=cupy.float32)
    blk = cupy.zeros(n, dtype=cupy.int32)
    thr = cupy.zeros(n, dtype=cupy.int32)
    kern = a.get_function("write_index<float>")
    kern((8,), (128,), (np.int64(n), np.float32(2.0), out, blk, thr))
    np.testing.assert_array_equal(out.get(), 2.0 * np.arange(n))
    np.testing.assert_array_equal(thr.get(), np.arange(n) % 128)


@pytest.mark.parametrize("arch", ARCHS)
def test_osvd_select_stays_out_of_local_memory(arch):
    """osvd_select keeps no per-sample array: its stack frame is at most 256 B (was 2176 B on
    sm_90 with r[512] and ois[32] per thread) and nothing spills."""
    _need_nvcc()
    b = CATALOG["dsc/osvd_select.cu"]
    rows = nvcc.compile_kernel(
        "dsc/osvd_select.cu",
        arch,
        b.defines,
        (*b.float32, *b.float64),
        b.includes,
        output="resources",
    )
    assert len(rows) == 2
    for r in rows:
        assert r.stack_bytes <= 256 and r.spill_stores == 0, r


def test_compile_kernel_refuses_an_unknown_output():
    """``output`` names what comes back; a typo is an error, not a silent PTX."""
    with pytest.raises(ValueError, match="output must be one of"):
        nvcc.compile_kernel(GOOD_KERNEL, "sm_80", output="sass")
