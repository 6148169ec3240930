"""The one-step head: its loss learns the exact one-step map where the ODE is known in
closed form, and the distill command trains, checkpoints and resumes like training."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from worldsim.config import load_config
from worldsim.models.precond import consistency_scalings
from worldsim.models.samplers import SamplerConfig, karras_sigmas, sample
from worldsim.models.world_model import to_uint8, to_unit
from worldsim.training.distill import (
    DistillConfig,
    Distiller,
    distance_of,
    distillation_loss,
    pseudo_huber,
    rollout_loss,
    solve_loss,
)


class ScalarStudent(torch.nn.Module):
    """f(x, sigma) = c_skip x + c_out F(c_in x, sigma) on 1-D data, F a small MLP."""

    def __init__(self, sigma_data=0.5, sigma_min=0.002):
        super().__init__()
        self.sigma_data, self.sigma_min = sigma_data, sigma_min
        self.F = torch.nn.Sequential(
            torch.nn.Linear(2, 64),
            torch.nn.SiLU(),
            torch.nn.Linear(64, 64),
            torch.nn.SiLU(),
            torch.nn.Linear(64, 1),
        )

    def forward(self, x, sigma):
        s = consistency_scalings(sigma, self.sigma_data, self.sigma_min)
        h = torch.cat([s.c_in[:, None] * x, s.c_noise[:, None]], dim=1)
        return s.c_skip[:, None] * x + s.c_out[:, None] * self.F(h)


def gaussian_denoiser(s: float):
    """The ideal denoiser of data ~ N(0, s^2): D(x, sigma) = x s^2 / (s^2 + sigma^2)."""
    return lambda x, sigma: x * s**2 / (s**2 + sigma[:, None] ** 2)


def test_distillation_learns_the_one_step_map_of_a_gaussian():
    # data ~ N(0, s^2) has the ideal denoiser D(x, sigma) = x s^2 / (s^2 + sigma^2), and its
    # probability-flow ODE maps x at level sigma to x sqrt(s^2 + smin^2) / sqrt(s^2 + sigma^2)
    torch.manual_seed(0)
    s, smin, smax = 0.5, 0.002, 5.0
    teacher = gaussian_denoiser(s)
    student = ScalarStudent(sigma_min=smin)
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    sigmas = karras_sigmas(40, smin, smax, 7.0)
    for _ in range(1500):
        x0 = s * torch.randn(256, 1, generator=gen)
        loss = distillation_loss(
            student, lambda x, sg: student(x, sg).detach(), teacher, x0, sigmas, gen
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.linspace(-2.5, 2.5, 101)[:, None]
    with torch.no_grad():
        one_step = sample(student, z, SamplerConfig("onestep", sigma_min=smin, sigma_max=smax))
    exact = z * smax * math.sqrt(s**2 + smin**2) / math.sqrt(s**2 + smax**2)
    assert (one_step - exact).abs().max() < 0.03, (one_step - exact).abs().max()
    samples = sample(
        student, torch.randn(20000, 1, generator=gen), SamplerConfig("onestep", sigma_max=smax)
    )
    assert abs(samples.std().item() - s * smax / math.sqrt(s**2 + smax**2)) < 0.02


def test_solve_target_learns_the_teachers_few_step_solution():
    # on the Gaussian, the teacher's Euler solver is linear in z: Euler-3 from sigma_max z
    # gives a * z, with a computed here by running the solver on z = 1 (x0 = D(x, 0) = x)
    torch.manual_seed(0)
    s, smin, smax = 0.5, 0.002, 5.0
    teacher = gaussian_denoiser(s)
    solver = SamplerConfig("euler", 3, sigma_min=smin, sigma_max=smax)
    a = sample(teacher, torch.ones(1, 1), solver).item()
    # and from a lower level (as the multistep sampler visits): x at level 0.3 -> b * x
    b = sample(teacher, torch.ones(1, 1), replace(solver, sigma_max=0.3)).item() / 0.3
    student = ScalarStudent(sigma_min=smin)
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for i in range(1200):
        x0 = s * torch.randn(256, 1, generator=gen)
        loss = solve_loss(student, teacher, x0, solver, gen, "l2", level=None if i % 2 else 0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.linspace(-2.5, 2.5, 101)[:, None]
    with torch.no_grad():
        one_step = sample(student, z, SamplerConfig("onestep", sigma_min=smin, sigma_max=smax))
        x = z * 0.4  # where noised data at level 0.3 lies
        at_level = student(x, torch.full((101,), 0.3))
        at_min = student(z, torch.full((101,), smin))
    assert (one_step - a * z).abs().max() < 0.03, (one_step - a * z).abs().max()
    assert (at_level - b * x).abs().max() < 0.03, (at_level - b * x).abs().max()
    assert torch.equal(at_min, z)  # the boundary condition is kept


def test_rollout_target_scores_the_frame_drawn_from_the_students_own_frames():
    # a student that ignores the noise and draws "last frame + 0.1 x the latest action
    # + 0.01 x the one before": from an all-zero real episode it drifts, and the loss is its
    # drift from the real (zero) frame
    K, u = 2, 3
    frames = torch.zeros(2, K + u + 1, 3, 4, 4)
    act = torch.tensor([[0, 1, 2, 1, 3], [1, 3, 0, 2, 1]])  # act[:, i]: the action at frame i

    def push(a):  # what the K actions of a window add
        return 0.1 * a[..., -1].float() + 0.01 * a[..., -2].float()

    def student(x, sigma, ctx, a):
        return ctx[:, -1] + push(a).view(-1, 1, 1, 1)

    sampler, gen = SamplerConfig("onestep", 1), torch.Generator().manual_seed(0)
    expected = []
    for b in range(2):
        last = torch.tensor(0.0)
        for t in range(u):  # drawn frames are rounded to uint8 before they are fed back
            last = to_unit(to_uint8(last + push(act[b, t : t + K])))
        expected.append((last + push(act[b, u : u + K])) ** 2)
    loss = rollout_loss(student, frames, act, K, u, sampler, gen, "l2")
    assert torch.allclose(loss, torch.stack(expected).mean()), (loss, expected)
    # no unroll: the student's frame from real context, scored against the real frame
    loss0 = rollout_loss(student, frames[:, : K + 1], act[:, :K], K, 0, sampler, gen, "l2")
    assert torch.allclose(loss0, push(act[:, :K]).pow(2).mean())
    # at a multistep level the input is the real frame noised to that level
    seen = []
    rollout_loss(
        lambda x, s, c, a: seen.append((x, s)) or x,
        frames + 0.5,
        act,
        K,
        0,
        sampler,
        gen,
        "l2",
        level=0.01,
    )
    assert (seen[0][1] == 0.01).all() and (seen[0][0] - 0.5).abs().max() < 0.1


def test_pseudo_huber_is_l2_like_far_and_quadratic_near():
    far = pseudo_huber(torch.full((1, 100), 1.0))
    assert torch.isclose(far, torch.tensor([10.0]), rtol=1e-2)
    near = pseudo_huber(torch.full((1, 100), 1e-5))
    c = 0.00054 * 10
    assert torch.isclose(near, torch.tensor([100 * 1e-10 / (2 * c)]), rtol=1e-2)


def test_motion_weights_weigh_the_students_distance_per_pixel():
    from worldsim.models.loss import motion_weights

    last = torch.zeros(2, 3, 4, 4)
    x0 = last.clone()
    x0[:, :, 1, 2] = 0.5  # one moving pixel per frame
    diff = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert motion_weights(x0, last, 0.0) is None
    w = motion_weights(x0, last, 15.0)
    assert w is not None and w.mean().item() == pytest.approx(1.0)
    assert w[0, 0, 1, 2].item() == pytest.approx(16 * w[0, 0, 0, 0].item())
    by_hand = (diff.square() * w).flatten(1).mean(1)
    assert torch.allclose(distance_of(diff, "l2", w), by_hand)
    assert torch.allclose(distance_of(diff, "l2", torch.ones_like(w)), distance_of(diff, "l2"))
    near, far = distance_of(diff, "pseudo_huber"), distance_of(diff, "pseudo_huber", w)
    assert not torch.allclose(near, far)  # the weight reaches the pseudo-Huber distance too


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_distill_refuses_a_bad_motion_weight(bad):
    with pytest.raises(ValueError, match="motion_weight"):
        DistillConfig(motion_weight=bad)


def test_distill_command_trains_checkpoints_and_resumes(small_run, tmp_path):
    out = tmp_path / "student"
    args = [
        f"teacher={small_run}",
        f"out={out}",
        "batch_size=4",
        "ckpt_every=2",
        "eval_every=2",
        "sample_every=4",
    ]
    d = Distiller(load_config("distill", DistillConfig, [*args, "steps=4"]))
    teacher = {
        k.removeprefix("denoiser."): v
        for k, v in d.source.weights().items()
        if k.startswith("denoiser.")
    }
    student = d.model.state_dict()  # the student starts as the teacher's weights
    assert student.keys() == teacher.keys()
    assert all(torch.equal(v, teacher[k]) for k, v in student.items())
    d.fit()
    assert (out / "samples" / "step_0000004.png").exists()
    resumed = Distiller(load_config("distill", DistillConfig, [*args, "steps=6", "resume=true"]))
    assert resumed.step == 4
    resumed.fit()
    assert resumed.step == 6


def test_distilling_further_from_a_world_folder(small_run, tmp_path):
    """teacher= and init= take a world folder; bundle run=<world> swaps in the new student."""
    from worldsim.sim.world_file import load_world
    from worldsim.training.bundle import BundleConfig, bundle

    student = tmp_path / "student"
    args = [f"teacher={small_run}", f"out={student}", "batch_size=4", "steps=2"]
    Distiller(load_config("distill", DistillConfig, args)).fit()
    world = bundle(BundleConfig(run=str(small_run), student=str(student), out=str(tmp_path / "w")))
    more = tmp_path / "more"
    d = Distiller(
        load_config(
            "distill",
            DistillConfig,
            [
                f"teacher={world}",
                f"init={world}",
                f"out={more}",
                "batch_size=4",
                "steps=2",
                "ema=0",
            ],
        )
    )
    first = load_world(world)
    for a, b in zip(
        d.model.state_dict().values(), first.student.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)  # starts from the world's (fp16) student, not the teacher
    d.fit()
    solved = Distiller(
        load_config(
            "distill",
            DistillConfig,
            [
                f"teacher={world}",
                f"init={world}",
                "target=solve",
                f"out={tmp_path / 'solved'}",
                "batch_size=4",
                "steps=2",
            ],
        )
    )
    solved.fit()
    assert solved.step == 2 and (tmp_path / "solved" / "latest").exists()
    rolled = Distiller(
        load_config(
            "distill",
            DistillConfig,
            [
                f"teacher={world}",
                f"init={world}",
                "target=rollout",
                "unroll=2",
                f"out={tmp_path / 'rolled'}",
                "batch_size=4",
                "steps=2",
            ],
        )
    )
    segment = rolled.train_data.sample(2, np.random.default_rng(0))  # context + unroll + 1 frames
    assert segment.obs.shape[1] == rolled.model_cfg.denoiser.context + 3
    rolled.fit()
    assert rolled.step == 2 and (tmp_path / "rolled" / "latest").exists()
    w2 = bundle(BundleConfig(run=str(world), student=str(more), out=str(tmp_path / "w2")))
    second = load_world(w2)
    assert second.meta["student"]["run"] == str(more)
    assert torch.equal(second.start_frames, first.start_frames)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            second.model.state_dict().values(), first.model.state_dict().values(), strict=True
        )
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            second.student.state_dict().values(), first.student.state_dict().values(), strict=True
        )
    )


def test_schedule_follows_the_time_budget(small_run, tmp_path):
    d = Distiller(
        load_config(
            "distill",
            DistillConfig,
            [
                f"teacher={small_run}",
                f"out={tmp_path / 's'}",
                "steps=1000",
                "minutes=10",
                "n_start=10",
                "n_end=40",
            ],
        )
    )
    assert d.cfg.levels_at(d.schedule_step()) == 10
    d.elapsed = 9.5 * 60  # 95% of the time budget spent at step 0
    assert d.schedule_step() == 950 and d.cfg.levels_at(d.schedule_step()) == 40


def test_distilling_on_another_games_data_is_refused(small_run, tmp_path):
    from worldsim.data.collect import CollectConfig, collect
    from worldsim.data.store import DataError

    maze = collect(
        load_config(
            "collect",
            CollectConfig,
            ["env=maze", f"out={tmp_path / 'maze'}", "steps=200", "workers=1", "env.frame_size=32"],
        )
    )
    cfg = load_config(
        "distill",
        DistillConfig,
        [f"teacher={small_run}", f"data={maze.root}", f"out={tmp_path / 's'}", "steps=1"],
    )
    with pytest.raises(DataError, match="not the teacher's game"):
        Distiller(cfg)
