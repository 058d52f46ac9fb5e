"""The C kernel for per-example convolution gradients (dpscope.native, rules/_conv_native.py):
exact against torch.func in float64 for every option it takes, float32 close, the same with
threads, and a clear fallback to torch ops where it cannot be built."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

from dpscope import clipping, native
from dpscope.clipping.rules import _conv_native
from dpscope.clipping.rules import conv as conv_rule
from tests.clipping.conftest import TEST_DEVICE
from dpscope.clipping.strategies.plans import LayerPlan
from tests.clipping.oracle import assert_close, check_against_references
from tests.clipping.test_rules import channels_innermost, check_layer

def xent(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


pytestmark = pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the C kernel runs on the CPU only")
needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")


def torch_func_grads(conv: nn.Module, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per-example weight gradients of sum(conv(x_i) * d_i), by torch.func."""
    params = {"weight": conv.weight.detach()}
    buffers = {k: v.detach() for k, v in conv.named_parameters() if k != "weight"}

    def loss(p, xi, di):
        return (functional_call(conv, {**p, **buffers}, (xi.unsqueeze(0),)) * di.unsqueeze(0)).sum()

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, d)["weight"]


@st.composite
def native_configs(draw):
    """1-d and 2-d convolutions of groups 1: channel counts that leave vector edges (outputs not
    a multiple of the vector width, kernel rows of 1 to 21 taps), strides, dilation, padding."""
    dims = draw(st.integers(1, 2))
    c_in, c_out = draw(st.integers(1, 7)), draw(st.integers(1, 20))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(dims))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "circular"]))
    conv = (nn.Conv1d, nn.Conv2d)[dims - 1](c_in, c_out, kernel, stride=stride, padding=padding,
                                            dilation=dilation, bias=draw(st.booleans()), padding_mode=mode)
    return conv, (c_in,) + (draw(st.integers(5, 9)),) * dims


@needs_compiler
@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True)
@given(config=native_configs(), batch=st.sampled_from([1, 3, 10]), channels_last=st.booleans())
def test_native_grads_equal_torch_func(config, batch, channels_last):
    torch.manual_seed(3)
    conv, in_shape = config
    x = torch.randn(batch, *in_shape)
    d = torch.randn_like(conv(x))
    if channels_last:
        x, d = channels_innermost(x), channels_innermost(d)
    got = _conv_native.per_example_grads(conv, x, d)
    assert got is not None, native.unavailable_reason()
    want = torch_func_grads(conv, x, d)
    assert_close("weight", got, want, f"native kernel, {conv}")
    norms = _conv_native.per_example_sq_norms(conv, x, d)  # formed the same way, never stored
    assert_close("squared norms", norms, want.flatten(1).square().sum(1), f"native kernel, {conv}")


@needs_compiler
@pytest.mark.parametrize("make_conv, size", [
    (lambda: nn.Conv2d(1, 16, 8, stride=2, padding=3), 28),  # the cnn's stem
    (lambda: nn.Conv2d(16, 32, 4, stride=2), 13),  # the cnn's second convolution
    (lambda: nn.Conv2d(3, 16, 3, padding=1), 32),  # resnet20's stem
    (lambda: nn.Conv2d(16, 24, 3, dilation=2, padding=2), 12),  # dilated width: runs of one tap's channels
])
def test_native_float32_and_threads(make_conv, size):
    """The float32 kernel against float64, and split over threads: bit-equal to one thread."""
    torch.manual_seed(4)
    conv = make_conv()
    x = channels_innermost(torch.randn(40, conv.in_channels, size, size))
    d = channels_innermost(torch.randn_like(conv(x)))
    want = _conv_native.per_example_grads(conv, x, d)
    conv32 = conv.float()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _conv_native.per_example_grads(conv32, x.float(), d.float())
        one_norms = _conv_native.per_example_sq_norms(conv32, x.float(), d.float())
        torch.set_num_threads(3)
        several = _conv_native.per_example_grads(conv32, x.float(), d.float())
        several_norms = _conv_native.per_example_sq_norms(conv32, x.float(), d.float())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, several) and torch.equal(one_norms, several_norms)
    scale = want.abs().max()
    assert ((one.double() - want).abs().max() / scale).item() < 1e-5
    want_norms = want.flatten(1).square().sum(1)
    assert ((one_norms.double() - want_norms).abs().max() / want_norms.max()).item() < 1e-5


@needs_compiler
def test_engine_materialises_convolutions_by_the_native_kernel(monkeypatch):
    """auto's materialised convolutions (fastest_grads) go through the kernel, and every strategy
    still equals the naive and vmap references on a cnn-shaped model."""
    calls = []
    kernel = _conv_native.per_example_grads
    monkeypatch.setattr(_conv_native, "per_example_grads", lambda *args: calls.append(1) or kernel(*args))
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 16, 8, stride=2, padding=3), nn.Tanh(), nn.Conv2d(16, 20, 4, stride=2),
                          nn.Flatten(), nn.Linear(20 * 6 * 6, 3))
    x = channels_innermost(torch.randn(5, 1, 28, 28))
    check_layer(model, x)
    assert calls


@needs_compiler
def test_native_refuses_shapes_that_would_read_out_of_bounds():
    conv = nn.Conv2d(2, 4, 3)
    x = torch.randn(2, 2, 6, 6)
    with pytest.raises(ValueError, match="does not fit"):
        _conv_native.per_example_grads(conv, x, torch.randn(2, 4, 5, 5))  # a 6x6 input gives 4x4


def test_native_not_used_where_it_does_not_apply():
    x = torch.randn(2, 4, 6, 6)
    assert _conv_native.per_example_grads(nn.Conv2d(4, 4, 3, groups=2), x, torch.randn(2, 4, 4, 4)) is None
    x3 = torch.randn(2, 2, 4, 4, 4)
    assert _conv_native.per_example_grads(nn.Conv3d(2, 2, 2), x3, torch.randn(2, 2, 3, 3, 3)) is None


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A clean load of the kernels into an empty cache, forgotten again afterwards."""
    monkeypatch.setenv("DPSCOPE_CACHE", str(tmp_path))
    native.reset()
    yield tmp_path
    native.reset()


def test_native_disabled_by_environment_falls_back_to_torch_ops(monkeypatch, fresh_native):
    monkeypatch.setenv("DPSCOPE_NATIVE", "0")
    assert native.library() is None and native.unavailable_reason() == "DPSCOPE_NATIVE=0"
    torch.manual_seed(7)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    x = torch.randn(3, 1, 6, 6)
    d = torch.randn_like(conv(x))
    assert _conv_native.per_example_grads(conv, x, d) is None
    assert_close("weight", conv_rule.fastest_grads(conv, x, d)["weight"], torch_func_grads(conv, x, d), "fallback")


def test_a_compiler_that_fails_gives_one_warning_and_torch_ops(monkeypatch, fresh_native):
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    with pytest.warns(RuntimeWarning, match="could not build the C kernels.*use torch ops"):
        assert native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None  # decided once a process: no second warning
    assert "failed" in native.unavailable_reason()
    assert not list(fresh_native.rglob("*.so"))  # nothing half-built left in the cache


@needs_compiler
def test_native_is_built_once_into_the_cache(monkeypatch, fresh_native):
    assert native.library() is not None
    built = list(fresh_native.rglob("kernels.so"))
    assert len(built) == 1
    native.reset()
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert native.library() is not None


@needs_compiler
@pytest.mark.parametrize("max_extra_bytes, second_conv", [
    (None, LayerPlan("fastest", "stored")),  # no budget: the kernel's materialised gradients
    (0, LayerPlan("ghost", "contraction")),  # none stored: the kernel's norms, contracted sums
])
def test_auto_puts_the_cnn_second_convolution_on_the_kernel(max_extra_bytes, second_conv):
    """The cnn's second convolution (25 positions): its Gram ghost norm costs about as much as
    materialising, but the kernel forms both faster (rules/conv.py: NATIVE_SPEEDUP), and its
    norms need no memory. Exact either way."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 16, 8, stride=2, padding=3), nn.Tanh(), nn.Conv2d(16, 32, 4, stride=2),
                          nn.Flatten(), nn.Linear(32 * 6 * 6, 3))
    x = channels_innermost(torch.randn(6, 1, 28, 28))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    engine = clipping.ClippingEngine(model, "auto", max_extra_bytes=max_extra_bytes)
    engine.grad_norms(xent, x, y)
    (plans,) = engine.layer_plans().values()
    assert plans["2"] == second_conv, plans
    check_against_references(model, xent, x, y, strategies=("auto",), max_extra_bytes=max_extra_bytes)


@st.composite
def rows_configs(draw):
    """Convolutions in NCHW for the rows kernel: output channels and taps that leave edge tiles,
    strides 1-3 (stride phases), dilation, every padding mode and "same" (uneven for even
    kernels; stride 1 only, as torch allows)."""
    dims = draw(st.integers(1, 2))
    c_in, c_out = draw(st.integers(1, 7)), draw(st.integers(1, 9))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = draw(st.sampled_from(["same", "valid", "ints"]))
    stride = (1,) * dims if padding == "same" else tuple(draw(st.integers(1, 3)) for _ in range(dims))
    if padding == "ints":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(dims))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "circular"]))
    conv = (nn.Conv1d, nn.Conv2d)[dims - 1](c_in, c_out, kernel, stride=stride, padding=padding,
                                            dilation=dilation, bias=draw(st.booleans()), padding_mode=mode)
    return conv, (c_in,) + tuple(draw(st.integers(7, 12)) for _ in range(dims))


@needs_compiler
@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True)
@given(config=rows_configs(), batch=st.sampled_from([1, 3, 10]))
def test_rows_kernel_equals_torch_func(config, batch):
    """The NCHW rows kernel (native/conv_rows.c), taken for every size here (its size threshold
    set to 0), against torch.func in float64: gradients and norms."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_conv_native, "ROWS_MIN_POSITIONS", 0)
        _check_rows_kernel(*config, batch)


def _check_rows_kernel(conv: nn.Module, in_shape: tuple[int, ...], batch: int) -> None:
    torch.manual_seed(9)
    x = torch.randn(batch, *in_shape)
    d = torch.randn_like(conv(x))
    assert _conv_native.by_rows(conv, x, d)
    got = _conv_native.per_example_grads(conv, x, d)
    assert got is not None, native.unavailable_reason()
    want = torch_func_grads(conv, x, d)
    assert_close("weight", got, want, f"rows kernel, {conv}")
    norms = _conv_native.per_example_sq_norms(conv, x, d)
    assert_close("squared norms", norms, want.flatten(1).square().sum(1), f"rows kernel, {conv}")


@needs_compiler
@pytest.mark.parametrize("make_conv, size", [
    (lambda: nn.Conv2d(16, 16, 3, padding=1, bias=False), 28),  # resnet20's first stage on PneumoniaMNIST
    (lambda: nn.Conv2d(1, 16, 3, padding=1, bias=False), 28),  # its stem
    (lambda: nn.Conv2d(32, 32, 3, padding=1, bias=False), 14),  # its second stage
    (lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), 28),  # into the second stage
])
def test_rows_kernel_float32_threads_and_engine(make_conv, size):
    """resnet20's NCHW layers take the rows kernel; float32 close to float64, threads
    bit-equal to one thread, and fastest_grads returns the same gradients."""
    torch.manual_seed(10)
    conv = make_conv()
    x = torch.randn(24, conv.in_channels, size, size)
    d = torch.randn_like(conv(x))
    assert _conv_native.by_rows(conv, x, d) and conv_rule.by_native_kernel(conv, x, d)
    want = torch_func_grads(conv, x, d)
    conv32 = conv.float()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _conv_native.per_example_grads(conv32, x.float(), d.float())
        torch.set_num_threads(3)
        several = _conv_native.per_example_grads(conv32, x.float(), d.float())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, several)
    assert ((one.double() - want).abs().max() / want.abs().max()).item() < 1e-5
    assert_close("weight", conv_rule.fastest_grads(conv, x, d)["weight"], want, "fastest_grads")


@needs_compiler
def test_rows_kernel_refuses_sizes_that_do_not_fit(monkeypatch):
    monkeypatch.setattr(_conv_native, "ROWS_MIN_POSITIONS", 0)
    conv = nn.Conv2d(2, 4, 3, padding=1)
    x = torch.randn(2, 2, 6, 6)
    with pytest.raises(ValueError, match="does not fit"):
        _conv_native.per_example_grads(conv, x, torch.randn(2, 4, 5, 6))  # 6x6 padded by 1 gives 6x6
    fn = native.library().dpscope_conv2d_rows_f64  # the kernel repeats the check itself
    d = torch.randn(2, 4, 6, 6)
    sq = x.new_empty(2)  # kept alive while the kernel writes into it
    args = (x.data_ptr(), d.data_ptr(), None, sq.data_ptr(), 2, 2, 6, 6, 4, 6, 6, 3, 3, 1, 1)
    assert fn(*args, 9, 8, 1, 1, 1, 1) == -2
    assert fn(*args, 8, 8, 1, 1, 2, 1) == -2  # stride 2 gives 3 rows, not 6
    assert fn(*args, 8, 8, 1, 1, 1, 1) == 0
    assert_close("squared norms", sq, torch_func_grads(conv, x, d).flatten(1).square().sum(1), "rows kernel")
