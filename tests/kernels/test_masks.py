"""Unit tests of the packing masks: a hand-checked example, op registration (opcheck, Meta),
torch.compile, FlexAttention vs SDPA, input validation, and the CUDA kernels (marked `cuda`).
The randomized spec lives in test_masks_properties.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from procpaint.kernels import masks as P

# text(3, causal) | image to generate(2, noise) | same image as context(2, full) | text(2, causal)
# then a second sample: text(2, causal)
EXAMPLE = ([3, 2, 2, 2, 2], ["causal", "noise", "full", "causal", "causal"], [9, 2])
EXPECTED = torch.tensor([
    # keys: t t t n n f f t t | t t
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # noise: earlier text + its whole split
    [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0],  # full: earlier non-noise + its whole split
    [1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0],  # later text never sees the noised copy
    [1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],  # second sample sees nothing of the first
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
], dtype=torch.bool)


def op_args(packing, device="cpu"):
    p = P.validate(*packing)
    return (*p.tensors(torch.device(device)), p.seq_len)


@pytest.mark.parametrize("fn", [P.attention_mask, P.attention_mask_ref])
def test_hand_checked_example(fn):
    assert torch.equal(fn(*EXAMPLE), EXPECTED)


def test_example_native(native):
    assert torch.equal(P.attention_mask(*EXAMPLE), EXPECTED)
    bias = P.attention_bias(*EXAMPLE, dtype=torch.float16)
    assert torch.equal(bias, torch.zeros(11, 11, dtype=torch.float16).masked_fill(~EXPECTED, float("-inf")))


def test_reference_fallback_routing(monkeypatch):
    """Without a native kernel every public function runs its reference and agrees."""
    monkeypatch.setattr(P, "_use_native", lambda op, device_type: False)
    assert torch.equal(P.attention_mask(*EXAMPLE), EXPECTED)
    assert torch.equal(P.attention_bias(*EXAMPLE, dtype=torch.float64) == 0, EXPECTED)
    got, want = P.block_mask(*EXAMPLE, block_size=4), P.block_mask_ref(*EXAMPLE, block_size=4)
    assert all(torch.equal(getattr(got, n), getattr(want, n)) for n in P._BLOCK_TENSORS)


def test_inputs_as_tensors_and_codes(native):
    splits, modes, samples = EXAMPLE
    codes = torch.tensor([P.MODES[m] for m in modes], dtype=torch.int8)
    got = P.attention_mask(torch.tensor(splits, dtype=torch.int32), codes, torch.tensor(samples))
    assert torch.equal(got, EXPECTED)


@pytest.mark.parametrize("packing", [
    EXAMPLE,
    ([1], ["noise"], [1]),
    ([97, 59, 1, 131], ["full", "noise", "causal", "full"], [156, 1, 131]),
])
@pytest.mark.parametrize("op", ["attention_mask", "attention_bias", "block_mask_tensors"])
def test_opcheck(native, packing, op):
    args = op_args(packing)
    extra = {"attention_mask": (), "attention_bias": (torch.bfloat16,), "block_mask_tensors": (16,)}[op]
    torch.library.opcheck(getattr(torch.ops.procpaint, op).default, (*args, *extra))


@pytest.mark.parametrize("use_native", [True, False])
def test_out_variants(native, monkeypatch, use_native):
    if not use_native:
        monkeypatch.setattr(P, "_use_native", lambda op, device_type: False)
    buf = torch.ones(11, 11, dtype=torch.bool)
    assert P.attention_mask(*EXAMPLE, out=buf) is buf and torch.equal(buf, EXPECTED)
    bias = torch.empty(11, 11, dtype=torch.bfloat16)
    assert P.attention_bias(*EXAMPLE, out=bias) is bias and torch.equal(bias == 0, EXPECTED)
    with pytest.raises(ValueError, match="out must"):
        P.attention_mask(*EXAMPLE, out=torch.empty(11, 10, dtype=torch.bool))


def test_opcheck_out_variants(native):
    args = op_args(EXAMPLE)
    torch.library.opcheck(torch.ops.procpaint.attention_mask_out.default,
                          (*args, torch.empty(11, 11, dtype=torch.bool)))
    torch.library.opcheck(torch.ops.procpaint.attention_bias_out.default,
                          (*args, torch.float32, torch.empty(11, 11)))


def test_meta_shapes(native):
    split_lens, modes, samples, L = op_args(EXAMPLE, "meta")
    assert torch.ops.procpaint.attention_mask(split_lens, modes, samples, L).shape == (11, 11)
    bias = torch.ops.procpaint.attention_bias(split_lens, modes, samples, L, torch.float16)
    assert bias.dtype == torch.float16 and bias.device.type == "meta"
    parts = torch.ops.procpaint.block_mask_tensors(split_lens, modes, samples, L, 4)
    assert [tuple(t.shape) for t in parts] == [(1, 1, 3), (1, 1, 3, 3)] * 4


def test_native_op_rejects_bad_metadata_with_value_error(native):
    split_lens, modes, samples, L = op_args(EXAMPLE)
    with pytest.raises(ValueError, match="crosses the sample boundary"):
        torch.ops.procpaint.attention_mask(split_lens, modes, torch.tensor([8, 3]), L)
    with pytest.raises(ValueError, match="must be > 0"):
        torch.ops.procpaint.block_mask_tensors(split_lens, modes, samples, L, 0)
    with pytest.raises(ValueError, match="split_modes"):
        torch.ops.procpaint.attention_mask(split_lens, modes + 5, samples, L)
    with pytest.raises(ValueError, match="seq_len"):
        torch.ops.procpaint.attention_mask(split_lens, modes, samples, L + 1)


def _bad_native_calls():
    """(call on the op arguments of EXAMPLE, error type, message): mistakes the checks of
    csrc/packing/packing_checks.h catch without reading values, so CPU and Meta both raise."""
    ops = torch.ops.procpaint
    return [
        (lambda s, m, n, L: ops.attention_mask(s.float(), m, n, L),
         TypeError, "split_lens must have an integer"),
        (lambda s, m, n, L: ops.attention_mask(s, m[None], n, L), ValueError, "split_modes must be 1-D"),
        (lambda s, m, n, L: ops.attention_bias(s, m, n, L, torch.int32),
         TypeError, "dtype must be a float type"),
        (lambda s, m, n, L: ops.attention_bias_out(s, m, n, L, torch.int64,
                                                   torch.empty(L, L, device=s.device)),
         TypeError, "dtype must be a float type"),
        (lambda s, m, n, L: ops.block_mask_tensors(s, m, n, L, 0), ValueError, "block_size must be > 0"),
    ]


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_native_errors_by_kind(native, device, case):
    """Error types follow csrc/common/checks.h: ValueError for shapes and values, TypeError for
    dtypes; the Meta implementations run the same checks as the kernels."""
    call, error, match = _bad_native_calls()[case]
    with pytest.raises(error, match=match):
        call(*op_args(EXAMPLE, device))


def test_native_out_dtype_is_a_type_error(native):
    split_lens, modes, samples, L = op_args(EXAMPLE)
    with pytest.raises(TypeError, match="attention_mask: out must have dtype Bool"):
        torch.ops.procpaint.attention_mask_out(split_lens, modes, samples, L, torch.empty(L, L))
    with pytest.raises(ValueError, match=r"attention_mask: out must have shape \(11, 11\)"):
        torch.ops.procpaint.attention_mask_out(split_lens, modes, samples, L,
                                               torch.empty(L, 3, dtype=torch.bool))


@pytest.mark.parametrize(("args", "phrase"), [
    (([], [], []), "empty packing"),
    (([3, 0], ["causal", "full"], [3]), r"split_lens\[1\] = 0 must be positive"),
    (([3], ["causal"], [-3]), "must be positive"),
    (([3], ["bidirectional"], [3]), "is not one of"),
    (([3], [7], [3]), "is not one of"),
    (([3, 2], ["causal"], [5]), "1 entries for 2 splits"),
    (([3, 2], ["causal", "full"], [4]), r"sum\(split_lens\) = 5 != sum\(sample_lens\) = 4"),
    (([3, 2], ["causal", "full"], [2, 3]), "split 0 .* crosses the boundary of sample 0"),
    (([2**31], ["causal"], [2**31]), "does not fit int32"),
    ((torch.ones(2, 2, dtype=torch.long), ["causal"], [4]), "must be 1-D"),
])
def test_validation_messages(args, phrase):
    with pytest.raises(ValueError, match=phrase):
        P.attention_mask(*args)


@pytest.mark.parametrize(("args", "phrase"), [
    (([2.0], ["causal"], [2]), "is not an int"),
    (("abc", ["causal"], [3]), "sequence of ints"),
    ((torch.tensor([2.0]), ["causal"], [2]), "must hold integers"),
])
def test_type_mistakes_raise_type_error(args, phrase):
    """Wrong types / dtypes are TypeError, as the native checks raise them (csrc/common/checks.h)."""
    with pytest.raises(TypeError, match=phrase):
        P.attention_mask(*args)


def test_block_mask_argument_errors():
    with pytest.raises(ValueError, match="block_size"):
        P.block_mask(*EXAMPLE, block_size=0)
    with pytest.raises(TypeError, match="floating"):
        P.attention_bias(*EXAMPLE, dtype=torch.int32)


def test_compiled_public_functions_fullgraph(native):
    torch._dynamo.reset()
    mask = torch.compile(P.attention_mask, fullgraph=True)(*EXAMPLE)
    assert torch.equal(mask, EXPECTED)
    bias = torch.compile(P.attention_bias, fullgraph=True)(*EXAMPLE, dtype=torch.float32)
    assert torch.equal(bias == 0, EXPECTED)
    tensors = torch.compile(lambda *a: P.block_mask(*a, block_size=4).kv_indices, fullgraph=True)(*EXAMPLE)
    assert torch.equal(tensors, P.block_mask_ref(*EXAMPLE, block_size=4).kv_indices)


def test_flex_attention_with_block_mask_matches_sdpa():
    """FlexAttention (forward runs on CPU) with our BlockMask == SDPA with the dense mask."""
    packing = ([40, 64, 64, 37, 20, 31], ["causal", "noise", "full", "causal", "full", "causal"], [205, 51])
    L = 256
    q, k, v = torch.randn(3, 1, 2, L, 16).unbind(0)  # (B, H, L, D) each
    dense = P.attention_mask(*packing)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    got = flex_attention(q, k, v, block_mask=P.block_mask(*packing, block_size=64))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch_bm = create_block_mask(P.mask_mod(*packing), None, None, L, L, device="cpu", BLOCK_SIZE=64)
    torch.testing.assert_close(flex_attention(q, k, v, block_mask=torch_bm), want, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("block_size", [16, 128])
def test_cuda_kernels_match_reference(native, block_size):
    packing = ([97, 256, 256, 59, 1, 131, 300],
               ["causal", "noise", "full", "causal", "full", "noise", "causal"], [668, 1, 431])
    L = sum(packing[0])
    mask = P.attention_mask(*packing, device="cuda")
    assert torch.equal(mask.cpu(), P.attention_mask_ref(*packing))
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        bias = P.attention_bias(*packing, dtype=dtype, device="cuda")
        assert torch.equal((bias == 0).cpu(), mask.cpu()) and torch.isneginf(bias[~mask]).all()
    got = P.block_mask(*packing, block_size=block_size, device="cuda")
    want = create_block_mask(P.mask_mod(*packing, device="cuda"), None, None, L, L, device="cuda",
                             BLOCK_SIZE=block_size)
    for name in P._BLOCK_TENSORS:
        assert torch.equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["attention_mask", "attention_bias", "block_mask_tensors"])
def test_cuda_opcheck(native, op):
    args = op_args(EXAMPLE, "cuda")
    extra = {"attention_mask": (), "attention_bias": (torch.float16,), "block_mask_tensors": (4,)}[op]
    torch.library.opcheck(getattr(torch.ops.procpaint, op).default, (*args, *extra))


def test_one_mode_definition_mirrored_by_the_cpp_header():
    """kernels.modes.Mode is the one Python definition; csrc/packing/packing_rule.h's enum must agree."""
    import re
    from pathlib import Path

    from procpaint.kernels.masks import MODES
    from procpaint.kernels.modes import Mode

    header = (Path(__file__).resolve().parents[2] / "csrc/packing/packing_rule.h").read_text()
    enum = re.search(r"enum Mode : int32_t \{([^}]*)\}", header).group(1)
    cpp = {name.strip()[1:].lower(): int(code) for name, code in re.findall(r"(k\w+)\s*=\s*(\d+)", enum)}
    assert cpp == {m.value: m.code for m in Mode} == MODES
    assert Mode.CAUSAL == "causal" and {"noise": 1}[Mode.NOISE] == 1      # plain strings everywhere
