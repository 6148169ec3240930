"""Closed-form oracles for the denoiser's maths, and that training lowers the loss."""

import copy

import pytest
import torch

from worldsim.models.denoiser import Denoiser, DenoiserConfig
from worldsim.models.precond import consistency_scalings, edm_scalings
from worldsim.models.samplers import SamplerConfig, karras_sigmas, sample
from worldsim.models.unet import UNetConfig

TINY = DenoiserConfig(
    context=2, unet=UNetConfig(channels=(16, 32), attention=(False, True), cond_dim=32)
)


def test_edm_scalings_at_known_sigmas():
    sd = 0.5
    s = edm_scalings(torch.tensor([1e-6, 0.5, 100.0]), sd)
    assert torch.allclose(s.c_skip, torch.tensor([1.0, 0.5, sd**2 / (1e4 + sd**2)]), atol=1e-6)
    assert torch.allclose(
        s.c_out,
        torch.tensor([1e-6, 0.5 * 0.5 / 0.5**0.5, 100 * sd / (1e4 + sd**2) ** 0.5]),
        atol=1e-6,
    )
    assert torch.allclose(s.c_in, 1 / (torch.tensor([1e-6, 0.5, 100.0]) ** 2 + sd**2).sqrt())
    # the network input and target both have unit variance when x0 has std sigma_data
    sigma = torch.tensor(2.0)
    s = edm_scalings(sigma, sd)
    assert torch.isclose(s.c_in**2 * (sd**2 + sigma**2), torch.tensor(1.0))


def test_consistency_boundary_condition_is_exact():
    s = consistency_scalings(torch.tensor(0.002), 0.5, sigma_min=0.002)
    assert s.c_skip.item() == 1.0 and s.c_out.item() == 0.0
    # far from sigma_min it tends to EDM's coefficients
    big, edm = (
        consistency_scalings(torch.tensor(80.0), 0.5, 0.002),
        edm_scalings(torch.tensor(80.0), 0.5),
    )
    assert torch.allclose(big.c_skip, edm.c_skip, rtol=1e-3) and torch.allclose(
        big.c_out, edm.c_out, rtol=1e-3
    )


def test_consistency_student_is_identity_at_sigma_min():
    D = Denoiser(TINY, num_actions=3, parameterization="consistency")
    for p in D.parameters():  # any weights at all
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 3, 16, 16)
    out = D(
        x,
        torch.full((2,), TINY.sigma_min),
        torch.randn(2, 2, 3, 16, 16),
        torch.zeros(2, 2, dtype=torch.long),
        torch.zeros(2),
    )
    assert torch.equal(out, x)


def test_karras_schedule_endpoints_are_exact():
    s = karras_sigmas(10, 0.002, 5.0, 7.0)
    assert s[0] == torch.tensor(5.0) and s[-1] == torch.tensor(0.002)
    assert (s[1:] < s[:-1]).all()


@pytest.mark.parametrize(
    "name,steps", [("euler", 1), ("euler", 3), ("heun", 4), ("onestep", 1), ("multistep", 3)]
)
def test_sampler_with_oracle_denoiser_returns_the_clean_frame(name, steps):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    calls = []

    def oracle(x, sigma):
        calls.append(sigma)
        return x0

    out = sample(
        oracle,
        torch.randn(2, 3, 8, 8),
        SamplerConfig(name, steps),
        torch.Generator().manual_seed(0),
    )
    assert torch.allclose(out, x0, atol=1e-5)
    assert len(calls) == SamplerConfig(name, steps).evaluations


def test_euler_solves_the_ode_of_a_gaussian():
    # data ~ N(0, s^2): the ideal denoiser is D(x, sigma) = x s^2 / (s^2 + sigma^2), and the
    # probability-flow ODE maps x_T = sigma_max z to z * s exactly (Karras et al. 2022, eq. 4).
    s = 0.5
    z = torch.randn(1000)
    ideal = lambda x, sigma: x * s**2 / (s**2 + sigma[:, None] ** 2)  # noqa: E731
    out = sample(ideal, z[:, None], SamplerConfig("heun", 100, sigma_max=80.0))
    assert torch.allclose(out[:, 0], z * s * 80.0 / (80.0**2 + s**2) ** 0.5, atol=5e-3)


def test_denoiser_loss_falls_when_overfitting_a_tiny_batch():
    from worldsim.models.loss import denoising_loss

    torch.manual_seed(0)
    D = Denoiser(TINY, num_actions=3)
    opt = torch.optim.Adam(D.parameters(), lr=2e-3)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    obs, act = torch.rand(4, 2, 3, 16, 16) * 2 - 1, torch.randint(0, 3, (4, 2))

    def loss_at(seed):
        return denoising_loss(D, x0, obs, act, torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = sum(loss_at(1000 + i).item() for i in range(8)) / 8
    for step in range(150):
        opt.zero_grad()
        loss_at(step).backward()
        opt.step()
    with torch.no_grad():
        after = sum(loss_at(1000 + i).item() for i in range(8)) / 8
    assert after < 0.6 * before


def _motion_case(weight):
    """A denoiser and a batch where only a 4x4 patch moves from the last context frame."""
    import dataclasses

    torch.manual_seed(0)
    D = Denoiser(dataclasses.replace(TINY, motion_weight=weight), num_actions=3)
    obs = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    x0 = obs[:, -1].clone()
    x0[:, :, 4:8, 4:8] = -x0[:, :, 4:8, 4:8]
    return D, x0, obs, torch.randint(0, 3, (2, 2))


def test_motion_weight_zero_is_the_plain_loss_and_weighting_shifts_it_to_the_moving_pixels(
    monkeypatch,
):
    import worldsim.models.loss as loss_mod

    def loss(weight):
        D, x0, obs, act = _motion_case(weight)
        with torch.no_grad():
            return loss_mod.denoising_loss(D, x0, obs, act, torch.Generator().manual_seed(3))

    # Same network and noise for every weight: record the plain loss's per-pixel errors,
    # then check the weighted loss against the weighted mean written out by hand.
    plain_mse, errs = torch.nn.functional.mse_loss, []

    def recording_mse(F_y, target):
        errs.append((F_y - target).square())
        return plain_mse(F_y, target)

    monkeypatch.setattr(loss_mod.F, "mse_loss", recording_mse)
    plain = loss(0.0).item()
    monkeypatch.undo()
    mask = torch.zeros_like(errs[0][:, :1])
    mask[:, :, 4:8, 4:8] = 1
    w = 1 + 10 * mask
    assert plain == pytest.approx(errs[0].mean().item())
    assert loss(10.0).item() == pytest.approx(((errs[0] * w).mean() / w.mean()).item(), rel=1e-5)
    moving_mean = (errs[0] * mask).sum().item() / (mask.sum().item() * 3)
    assert abs(loss(1000.0).item() - moving_mean) < 0.1 * abs(plain - moving_mean)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_motion_weight_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="motion_weight"):
        DenoiserConfig(motion_weight=bad)


def test_group_norm_keeps_bf16_channels_last_and_matches_fp32():
    from worldsim.models.unet import GroupNorm

    norm = GroupNorm(16, 96)  # 6 channels per group: the case routed through fp32 on CPU
    x = torch.randn(2, 96, 8, 8).contiguous(memory_format=torch.channels_last)
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    # exactly fp32's normalisation of the bf16 input, rounded once
    assert torch.equal(y, torch.nn.functional.group_norm(x.bfloat16().float(), 16).bfloat16())
    assert (y.float() - torch.nn.functional.group_norm(x, 16)).abs().max() < 0.05


def test_group_norm_routes_only_the_slow_bf16_kernel_cases_through_fp32():
    """PyTorch's bf16 channels-last kernel is slow below 1024 pixels with under 16 channels
    per group; those inputs (and only those) take the fp32 route, with fp32's values."""
    from worldsim.models.unet import GroupNorm

    cl = torch.channels_last
    for groups, side, slow in [(8, 16, True), (8, 8, True), (8, 32, False), (4, 8, False)]:
        norm = GroupNorm(groups, 64)
        torch.nn.init.normal_(norm.weight)
        x = torch.randn(2, 64, side, side).to(torch.bfloat16, memory_format=cl)
        assert norm.slow(x) == slow and not norm.slow(x.float())
        with torch.no_grad():
            y = norm(x)
            fp32 = torch.nn.functional.group_norm(x.float(), groups, norm.weight, norm.bias)
        assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=cl)
        if slow:
            assert torch.equal(y, fp32.bfloat16())
        assert (y.float() - fp32).abs().max() < 0.05


@pytest.mark.parametrize("stem,residual", [(1, False), (2, False), (2, True), (4, False)])
def test_packed_context_gives_the_plain_context_values(stem, residual):
    """`World` keeps its context `pack`ed by the stem; the denoiser and the reward model read
    it so (the reward model's first convolution re-folded for the packed layout where its
    stride allows, unpacked otherwise), the denoiser also taking and giving the frame
    packed, with the values plain frames give, up to rounding, with autograd too."""
    from worldsim.models.unet import pack, unpack

    D, R = _random_nets(stem, residual)
    obs, nxt, x, act, sigma, zero = _inputs()
    ctx = pack(obs.reshape(3, 6, 32, 32), stem)
    with torch.no_grad():
        got = unpack(D(pack(x, stem), sigma, ctx, act, zero, packed=True), stem)
        torch.testing.assert_close(got, D(x, sigma, obs, act, zero), rtol=1e-4, atol=1e-4)
        packed, plain = R(ctx, act[:, -1], pack(nxt, stem), packed=stem), R(obs, act[:, -1], nxt)
        for a, b in zip(packed, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    R(ctx, act[:, -1], pack(nxt, stem), packed=stem)[0].sum().backward()
    assert R.convs[0].weight.grad is not None


@pytest.mark.parametrize("name,ctx_noise", [("multistep", 0.0), ("onestep", 0.2), ("heun", 0.0)])
def test_packed_sampling_draws_the_plain_frames(name, ctx_noise):
    """Drawing with a packed context (World's state) uses the same noise, drawn as for plain
    frames and packed, so it gives the plain path's frames: re-noising samplers and a
    noised context included."""
    from worldsim.models.unet import pack, unpack
    from worldsim.sim.world import Sampler

    D = _random_student(std=0.2)
    obs, act = torch.rand(3, 2, 3, 32, 32) * 2 - 1, torch.randint(0, 3, (3, 2))
    draw, gens = Sampler(D, SamplerConfig(name, 3, still=0)), _three_generators
    plain = draw(obs, act, gens(), ctx_noise=ctx_noise)
    packed = draw(pack(obs.reshape(3, 6, 32, 32), 2), act, gens(), ctx_noise=ctx_noise, packed=True)
    assert packed.shape == (3, 12, 16, 16)
    torch.testing.assert_close(unpack(packed, 2), plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("packed", [False, True])
def test_still_keeps_the_last_frame_where_the_draw_moves_less(packed):
    """`sampler.still`: a pixel whose three colours all move at most that many levels from
    the last frame keeps the last frame's pixel exactly; every other pixel is the frame the
    sampler draws without it, from the same noise (plain and packed alike)."""
    from worldsim.models.unet import pack, unpack
    from worldsim.sim.world import Sampler

    D, gens = _random_student(std=0.05), _three_generators
    obs, act = torch.rand(3, 2, 3, 32, 32) * 0.2 - 0.1, torch.randint(0, 3, (3, 2))

    def draw(still: int) -> torch.Tensor:
        if not packed:
            return Sampler(D, SamplerConfig("onestep", 1, still=still))(obs, act, gens())
        ctx = pack(obs.reshape(3, 6, 32, 32), 2)
        out = Sampler(D, SamplerConfig("onestep", 1, still=still))(ctx, act, gens(), packed=True)
        return unpack(out, 2)

    raw, kept, last = draw(0), draw(12), obs[:, -1]
    near = ((raw - last).abs().amax(1, keepdim=True) <= 12.5 / 127.5).expand_as(raw)
    assert 0.05 < near.float().mean() < 0.95  # both kinds of pixel are in the test
    assert torch.equal(kept[near], last[near])
    torch.testing.assert_close(kept[~near], raw[~near])
    with pytest.raises(ValueError, match="sampler.still"):
        SamplerConfig("onestep", 1, still=256)


def _random_student(std: float):
    """A tiny one-step student (stem 2, context 2, 3 actions) with random weights."""
    from worldsim.models.denoiser import Denoiser, DenoiserConfig

    torch.manual_seed(0)
    unet = UNetConfig(channels=(8, 16), attention=(False, True), cond_dim=16, stem=2)
    D = Denoiser(
        DenoiserConfig(context=2, unet=unet), num_actions=3, parameterization="consistency"
    )
    for p in D.parameters():
        torch.nn.init.normal_(p, std=std)
    return D


def _three_generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in range(3)]


def _random_nets(stem: int, residual: bool = False):
    """A tiny denoiser and reward model with random weights, every layer nonzero (the
    zero-initialised ones would hide the blocks' work)."""
    from worldsim.models.reward import RewardConfig, RewardEndModel

    torch.manual_seed(0)
    unet = UNetConfig(channels=(8, 16), attention=(False, True), cond_dim=16, stem=stem)
    D = Denoiser(DenoiserConfig(context=2, unet=unet, residual=residual), num_actions=3)
    R = RewardEndModel(RewardConfig((8, 8), life_head=True), 2, num_actions=3, num_rewards=4)
    for p in [*D.parameters(), *R.parameters()]:
        torch.nn.init.normal_(p, std=0.2)
    return D, R


def _inputs():
    """obs (3, 2, 3, 32, 32), nxt and x (3, 3, 32, 32), act (3, 2), sigma and sigma_ctx (3,)."""
    g = torch.Generator().manual_seed(1)
    obs = torch.rand(3, 2, 3, 32, 32, generator=g) * 2 - 1
    nxt = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    x, act = torch.randn(3, 3, 32, 32, generator=g), torch.randint(0, 3, (3, 2), generator=g)
    return obs, nxt, x, act, torch.tensor([0.3, 1.0, 4.0]), torch.tensor([0.0, 0.1, 0.3])


def _every_fast_path(monkeypatch):
    """Take the fused kernels at every size, so that tiny networks exercise them too."""
    from worldsim.models import fused

    monkeypatch.setattr(fused, "CONV_ADD_MIN", 0)
    monkeypatch.setattr(fused, "FUSE_MIN", 0)


def _outputs(D, R, stem, dtype=torch.float32):
    """The denoiser's x0 and the reward model's outputs, from plain and packed context (as
    `World` keeps it, in `dtype`), all as plain fp32 tensors."""
    from worldsim.models.unet import pack, unpack

    obs, nxt, x, act, sigma, sigma_ctx = _inputs()
    ctx, nxt_p = pack(obs.reshape(3, 6, 32, 32), stem, dtype), pack(nxt, stem, dtype)
    with torch.no_grad():
        x0_p = D(pack(x, stem), sigma, ctx, act, sigma_ctx, packed=True)
        return [
            D(x, sigma, obs, act, sigma_ctx),
            unpack(x0_p.float(), stem),
            *R(obs, act[:, -1], nxt),
            *R(ctx, act[:, -1], nxt_p, packed=stem),
        ]


@pytest.mark.parametrize("stem,residual", [(1, False), (2, False), (2, True), (4, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_prepared_networks_equal_the_plain_ones(stem, residual, channels_last, monkeypatch):
    """`prepare` (folded stem, joined projections, fused scale/shift and residual adds,
    re-folded reward convolution) computes the plain networks' function: the denoiser and
    the reward model, plain and packed context, equal up to fp32 rounding."""
    from worldsim.models.prepare import prepare

    _every_fast_path(monkeypatch)
    D, R = _random_nets(stem, residual)
    if channels_last:  # as worlds load them: the layout the fused kernels need
        D, R = (m.to(memory_format=torch.channels_last) for m in (D, R))
    plain = _outputs(D, R, stem)
    fast = _outputs(prepare(D, "fp32"), prepare(R, "fp32"), stem)
    for a, b in zip(fast, plain, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stem", [1, 2, 4])
def test_prepared_bf16_networks_are_close_to_the_plain_ones(stem, monkeypatch):
    """In bf16 (weights, activations and the context World keeps) the prepared networks stay
    within bfloat16 rounding of the plain fp32 ones."""
    from worldsim.models.prepare import prepare

    _every_fast_path(monkeypatch)
    D, R = (m.to(memory_format=torch.channels_last) for m in _random_nets(stem))
    plain = _outputs(D, R, stem)
    fast = _outputs(prepare(D, "bf16"), prepare(R, "bf16"), stem, torch.bfloat16)
    for a, b in zip(fast, plain, strict=True):  # (bf16 spacing at 2-4 is 0.016-0.03)
        torch.testing.assert_close(a.float(), b, rtol=0.02, atol=0.02)


def test_prepared_network_is_a_frozen_snapshot():
    """A prepared network has no gradients, runs in eval mode and leaves the network as it
    was; later changes to the network's weights do not reach it until it is prepared again."""
    from worldsim.models.prepare import prepare

    D, _ = _random_nets(2)
    obs, _, x, act, sigma, sigma_ctx = _inputs()
    fast = prepare(D)
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert D.training and all(p.requires_grad for p in D.parameters())
    before = fast(x, sigma, obs, act, sigma_ctx)
    assert not before.requires_grad
    with torch.no_grad():
        for name, p in D.named_parameters():
            if ".proj." in name or "stem" in name:
                p.mul_(1.5)
    torch.testing.assert_close(fast(x, sigma, obs, act, sigma_ctx), before, rtol=0, atol=0)
    with torch.no_grad():
        want = D(x, sigma, obs, act, sigma_ctx)
    assert (want - before).abs().max() > 1e-2
    torch.testing.assert_close(prepare(D)(x, sigma, obs, act, sigma_ctx), want)
    with pytest.raises(ValueError, match="fp32 or bf16, got 'fp16'"):
        prepare(D, "fp16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_add_matches_conv_then_add(dtype):
    """The residual add done by the convolution (large channels-last inputs, no autograd)
    gives conv(x) + other up to rounding, in the input layout, leaving `other` as it was."""
    from worldsim.models import fused

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype, memory_format=torch.channels_last)
    cl = torch.channels_last
    x = torch.randn(4, 64, 32, 32).to(dtype, memory_format=cl)
    other = torch.randn(4, 64, 32, 32).to(dtype, memory_format=cl)
    kept = other.clone()
    assert other.numel() >= fused.CONV_ADD_MIN and fused._CONV_ADD is not None  # fused here
    # (or, on a CPU without the fused bf16 kernel, the fallback: the same values)
    ref = copy.deepcopy(conv).float()
    with torch.no_grad():
        got = fused.conv_add(conv, x, other)
        want = ref(x.float()) + other.float()
        xs, os = x[:1, :, :8, :8].contiguous(memory_format=cl), other[:1, :, :8, :8]
        small = fused.conv_add(conv, xs, os)  # the plain path
        want_small = ref(xs.float()) + os.float()
    assert got.dtype == dtype and got.is_contiguous(memory_format=cl) and torch.equal(other, kept)
    tol = 1e-5 if dtype == torch.float32 else 0.05  # bf16 spacing at |y| ~ 4-8 is 0.03
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(small.float(), want_small, rtol=tol, atol=tol)


def test_conv_add_falls_back_where_the_cpu_lacks_the_fused_kernel(monkeypatch):
    """oneDNN's fused bf16 convolution-add needs AVX-512 or AVX-NE-CONVERT: on an AVX2 CPU
    it raises, and conv_add then gives conv(x) + other by the plain path, from then on
    without trying the fused op again for that dtype."""
    from worldsim.models import fused

    calls = []

    def refuse(*args):
        calls.append(args)
        raise RuntimeError("mkldnn pointwise binary: bf16 path needs the cpu support ...")

    monkeypatch.setattr(fused, "_CONV_ADD", refuse)
    monkeypatch.setattr(fused, "_CONV_ADD_UNSUPPORTED", set())
    torch.manual_seed(0)
    cl = torch.channels_last
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=cl)
    x = torch.randn(4, 64, 32, 32).to(memory_format=cl)
    other = torch.randn(4, 64, 32, 32).to(memory_format=cl)
    with torch.no_grad():
        want = conv(x) + other
        got = fused.conv_add(conv, x, other)
        again = fused.conv_add(conv, x, other)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(again, want)
    assert len(calls) == 1 and fused._CONV_ADD_UNSUPPORTED == {torch.float32}

    def fails(*args):  # any other error of the fused op is the caller's to see
        raise RuntimeError("out of memory")

    monkeypatch.setattr(fused, "_CONV_ADD", fails)
    monkeypatch.setattr(fused, "_CONV_ADD_UNSUPPORTED", set())
    with torch.no_grad(), pytest.raises(RuntimeError, match="out of memory"):
        fused.conv_add(conv, x, other)


def test_fused_bf16_group_norm_matches_fp32():
    """Large bf16 channels-last inputs with 6 channels per group at 16x16 are normalised in
    fp32, and, in a prepared adaptive norm, as x*a + b from fp32 sums (scale and shift
    included); the results stay within bf16 rounding."""
    from worldsim.models.fused import fuses
    from worldsim.models.prepare import ada_norm
    from worldsim.models.unet import AdaGroupNorm, GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(16, 96)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(32, 96, 16, 16) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
    xb = x.bfloat16()
    with torch.no_grad():
        assert fuses(norm, xb) and not fuses(norm, xb[:2]) and not fuses(norm, x)
        y = norm(xb)
        ref = torch.nn.functional.group_norm(
            xb.double(), 16, norm.weight.double(), norm.bias.double()
        )
        assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
        assert (y.double() - ref).abs().max() < 0.06  # bf16 spacing at |y| ~ 4-8 is 0.03
        ada = AdaGroupNorm(96, 8)
        cond = torch.randn(32, 8)
        scale, shift = ada.proj(cond)[:, :, None, None].chunk(2, dim=1)
        want = torch.nn.functional.silu(
            torch.nn.functional.group_norm(xb.double(), 16) * (1 + scale.double()) + shift.double()
        )
        assert (ada(xb, cond).double() - want).abs().max() < 0.06
        got = ada_norm(ada.norm, xb, 1 + scale, shift)
        assert got.dtype == torch.bfloat16 and (got.double() - want).abs().max() < 0.06
