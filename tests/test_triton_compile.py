"""Every Triton kernel compiles for the GPU (sm_90, Hopper) on this machine,
without a GPU: triton.compile with a CUDA target runs the whole pipeline down
to a cubin with the ptxas that ships in the triton wheel. This catches what
the interpreter cannot (constexpr misuse, unsupported ops, type errors in the
compiled lowering). It needs the kernels un-interpreted, so `make test` runs
this file in a separate pass without TRITON_INTERPRET."""

import os

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiled in make test's separate pass without TRITON_INTERPRET", allow_module_level=True)

import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from diffaccel.ops.triton import kernels, selection  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
POINTER = {tl.float32: "*fp32", tl.bfloat16: "*bf16", tl.float16: "*fp16", tl.float64: "*fp64"}
ACC = {tl.float32: tl.float32, tl.bfloat16: tl.float32, tl.float16: tl.float32, tl.float64: tl.float64}


def _compile(kernel, types, constexprs):
    """types: argument -> Triton type string for every runtime argument."""
    names = kernel.arg_names
    signature = {n: ("constexpr" if n in constexprs else types[n]) for n in names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=HOPPER)
    assert compiled.asm["cubin"]
    return compiled.asm["ptx"]


@pytest.mark.parametrize("data", [tl.float32, tl.bfloat16, tl.float64], ids=str)
@pytest.mark.parametrize("k", [0, 4])
@pytest.mark.parametrize("threshold", [0, 1, 2])
def test_ei_step_kernel(data, k, threshold):
    p = POINTER[data]
    types = {n: p for n in ("x_ptr", "m_ptr", "h0_ptr", "h1_ptr", "h2_ptr", "h3_ptr", "z_ptr", "x_next_ptr", "d_ptr")}
    types.update(
        c_ptr="*fp64",
        c_stride="i64",
        scale_ptr="*fp64" if data == tl.float64 else "*fp32",
        clip_hi="fp32",
        clip_lo="fp32",
        n="i64",
        per_sample="i64",
    )
    ptx = _compile(
        kernels.ei_step_kernel,
        types,
        dict(K=k, NOISE=k == 0, THRESHOLD=threshold, PER_SAMPLE=threshold == 2, ACC=ACC[data], BLOCK=kernels.BLOCK),
    )
    assert "mul.rn" in ptx  # d's products, as the selection's keys round them (kernels._product)
    assert "div.full" not in ptx


@pytest.mark.parametrize("data", [tl.float32, tl.bfloat16], ids=str)
@pytest.mark.parametrize("outputs", [1, 2])
def test_multistep_combine_kernel(data, outputs):
    types = {f"t{j}": POINTER[data] for j in range(8)}
    types.update(c_ptr="*fp32", c_stride="i64", y0_ptr=POINTER[data], y1_ptr=POINTER[data], n="i64", per_sample="i64")
    _compile(
        kernels.multistep_combine_kernel,
        types,
        dict(N=8, M=outputs, PER_SAMPLE=True, ACC=tl.float32, BLOCK=kernels.BLOCK),
    )


@pytest.mark.parametrize("data", [tl.float32, tl.float16, tl.float64], ids=str)
@pytest.mark.parametrize("dynamic", [False, True])
def test_threshold_kernel(data, dynamic):
    types = dict(
        x_ptr=POINTER[data],
        scale_ptr="*fp64" if data == tl.float64 else "*fp32",
        clip_hi="fp32",
        clip_lo="fp32",
        y_ptr=POINTER[data],
        n="i64",
        per_sample="i64",
    )
    ptx = _compile(kernels.threshold_kernel, types, dict(DYNAMIC=dynamic, ACC=ACC[data], BLOCK=kernels.BLOCK))
    assert "div.full" not in ptx  # correctly rounded, as the reference divides (kernels._quotient)


@pytest.mark.parametrize("data", [tl.float32, tl.bfloat16, tl.float64], ids=str)
@pytest.mark.parametrize("from_ei", [False, True])
@pytest.mark.parametrize("size", ["i32", "i64"])  # how Triton types the sizes and ranks: by their values
@pytest.mark.parametrize("bracket", [False, True])
def test_selection_kernels(data, from_ei, size, bracket):
    float64 = data == tl.float64
    key_bits = 63 if float64 else 31
    key_ptr = "*i64" if float64 else "*i32"
    inf_key = 0x7FF0000000000000 if float64 else 0x7F800000
    key = dict(KEY=tl.int64 if float64 else tl.int32, KEY_BITS=key_bits, DIGIT_BITS=selection.DIGIT_BITS)
    inputs = dict(x_ptr=POINTER[data], m_ptr=POINTER[data], c_ptr="*fp64", c_stride="i64")
    sizes = dict(
        per_sample=size, chunk=size, below=size, above=size, capacity=size, batch="i32", pass_index="i32", passes="i32"
    )
    state = dict(found_ptr="*i32", under_ptr="*i32", flags_ptr="*i32", candidates_ptr=key_ptr)
    options = dict(FROM_EI=from_ei, ACC=ACC[data], BLOCK=selection.SELECT_BLOCK, BRACKET=bracket, **key)
    if bracket:
        element = dict(FROM_EI=from_ei, ACC=ACC[data], KEY=key["KEY"], INF_KEY=inf_key)
        _compile(
            selection.select_bracket_ends_kernel,
            dict(inputs, ends_ptr=key_ptr, flags_ptr="*i32", per_sample=size, k_lo="i32", k_hi="i32"),
            dict(element, LOG2=selection.BRACKET_SAMPLE_LOG2),
        )
        _compile(
            selection.select_bracket_kernel,
            dict(inputs, **state, ends_ptr=key_ptr, nan_ptr="*i32", per_sample=size, chunk=size, capacity=size),
            dict(element, BLOCK=selection.SELECT_BLOCK),
        )
    histogram = _compile(
        selection.select_histogram_kernel,
        dict(inputs, **state, hist_ptr="*i32", nan_ptr="*i32", **sizes),
        dict(options, INF_KEY=inf_key),
    )
    above = _compile(
        selection.select_above_kernel,
        dict(inputs, **state, hist_ptr="*i32", above_ptr=key_ptr, **sizes),
        dict(options, MAX_KEY=(1 << key_bits) - 1),
    )
    if from_ei:  # the keys of c_x x + c_m m: products rounded alone in both kernels, never fused
        for ptx in (histogram, above):
            assert "mul.rn" in ptx and "fma." not in ptx
    _compile(
        selection.select_scale_kernel,
        dict(
            hist_ptr="*i32",
            nan_ptr="*i32",
            above_ptr=key_ptr,
            found_ptr="*i32",
            under_ptr="*i32",
            flags_ptr="*i32",
            scale_ptr="*fp64" if float64 else "*fp32",
            w_hi="fp32",
            w_lo="fp32",
            mv_hi="fp32",
            mv_lo="fp32",
            **sizes,
        ),
        dict(DPM_SOLVER_STYLE=from_ei, ACC=ACC[data], BRACKET=bracket, **key),
    )


@pytest.mark.parametrize("data", [tl.float32, tl.bfloat16, tl.float64], ids=str)
def test_error_norm_kernels(data):
    _compile(
        kernels.error_norm_partials_kernel,
        dict(
            high_ptr=POINTER[data],
            low_ptr=POINTER[data],
            prev_ptr=POINTER[data],
            partial_ptr="*fp64",
            per_sample="i64",
            chunks="i64",
            atol_hi="fp32",
            atol_lo="fp32",
            rtol_hi="fp32",
            rtol_lo="fp32",
        ),
        dict(ACC=ACC[data], CHUNK=kernels.NORM_CHUNK, BLOCK=kernels.BLOCK),
    )
    _compile(
        kernels.error_norm_finish_kernel,
        dict(
            partial_ptr="*fp64",
            out_ptr="*fp64" if data == tl.float64 else "*fp32",
            batch="i64",
            chunks="i64",
            per_sample="i64",
        ),
        dict(BATCH_BLOCK=16),
    )


@pytest.mark.parametrize("data", [tl.float32, tl.bfloat16, tl.float64], ids=str)
def test_threshold_backward_kernel(data):
    acc = "*fp64" if data == tl.float64 else "*fp32"
    _compile(
        kernels.threshold_backward_partials_kernel,
        dict(
            grad_ptr=POINTER[data],
            x_ptr=POINTER[data],
            scale_ptr=acc,
            passed_ptr=acc,
            partial_ptr="*fp64",
            per_sample="i64",
            chunks="i64",
        ),
        dict(ACC=ACC[data], CHUNK=kernels.NORM_CHUNK, BLOCK=kernels.BLOCK),
    )


@pytest.mark.parametrize("data", [tl.float32, tl.bfloat16, tl.float64], ids=str)
def test_error_norm_backward_kernel(data):
    _compile(
        kernels.error_norm_backward_kernel,
        dict(
            high_ptr=POINTER[data],
            low_ptr=POINTER[data],
            prev_ptr=POINTER[data],
            k_ptr="*fp64" if data == tl.float64 else "*fp32",
            grad_high_ptr=POINTER[data],
            grad_low_ptr=POINTER[data],
            grad_prev_ptr=POINTER[data],
            n="i64",
            per_sample="i64",
            atol_hi="fp32",
            atol_lo="fp32",
            rtol_hi="fp32",
            rtol_lo="fp32",
        ),
        dict(ACC=ACC[data], BLOCK=kernels.BLOCK),
    )


@pytest.mark.parametrize("data", [tl.float32, tl.bfloat16, tl.float64], ids=str)
@pytest.mark.parametrize("has_noise", [False, True])
def test_langevin_kernels(data, has_noise):
    acc = ACC[data]
    philox = dict(seed_lo="i64", seed_hi="i64", offset_lo="i64", offset_hi="i64")
    _compile(
        kernels.langevin_norms_kernel,
        dict(
            score_ptr=POINTER[data], z_ptr=POINTER[data], partial_ptr="*fp64", per_sample="i64", chunks="i64", **philox
        ),
        dict(HAS_NOISE=has_noise, ACC=acc, CHUNK=kernels.NORM_CHUNK, BLOCK=kernels.BLOCK),
    )
    step = "*fp64" if data == tl.float64 else "*fp32"
    _compile(
        kernels.langevin_steps_kernel,
        dict(
            partial_ptr="*fp64",
            alpha_ptr="*fp64",
            alpha_stride="i64",
            step_ptr=step,
            noise_scale_ptr=step,
            batch="i64",
            chunks="i64",
            snr_hi="fp32",
            snr_lo="fp32",
        ),
        dict(PER_SAMPLE=has_noise, BATCH_BLOCK=16),
    )
    _compile(
        kernels.langevin_update_kernel,
        dict(
            x_ptr=POINTER[data],
            score_ptr=POINTER[data],
            z_ptr=POINTER[data],
            step_ptr=step,
            noise_scale_ptr=step,
            x_new_ptr=POINTER[data],
            x_mean_ptr=POINTER[data],
            n="i64",
            per_sample="i64",
            **philox,
        ),
        dict(HAS_NOISE=has_noise, ACC=acc, BLOCK=kernels.BLOCK),
    )
