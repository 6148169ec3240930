"""Does a world keep the game's rules over long play? Rule checkers for Bricks and Maze.

PSNR says how close a frame is to the real one; it cannot say whether the world still plays
the game a hundred steps later, when no real frame is left to compare with. This module
reads the objects off a Bricks frame (the ball, the paddle, the wall of bricks, the lives
left) and checks each transition against the game's rules:

- one ball, and one paddle in the paddle's row;
- the paddle moves at most its speed per step;
- the ball moves a bounded distance per step, unless it was just served again;
- bricks never come back (unless the wall was cleared and a new one drawn);
- lives never increase, fall by at most one, and a lost life puts the ball on the paddle.

For Maze it reads the wall height of every column of the first-person view and checks:

- walls are centred on the horizon (each column: ceiling, one wall span, floor);
- the view stays still when the player does nothing (NOOP);
- a turn moves the view the way it turns (the scene slides left under TURN_RIGHT).

It is checked on real play first (`worldsim eval` reports both): a rule the real game breaks
under this reading is a bug in the reader, not in the world.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from worldsim_envs import bricks as game
from worldsim_envs import maze

_TOLERANCE = 60  # colour distance (sum over RGB) that still counts as the object's colour


class BricksObjects(NamedTuple):
    """What one frame shows: ball blobs' centres, the paddle's left edge (or None), the
    wall of bricks (6, 10) bool, and the lives left."""

    balls: list[tuple[float, float]]
    paddle: float | None
    bricks: np.ndarray
    lives: int


def _near(pixels: np.ndarray, color: np.ndarray) -> np.ndarray:
    return np.abs(pixels.astype(np.int32) - color.astype(np.int32)).sum(-1) < _TOLERANCE


def _blobs(mask: np.ndarray) -> list[tuple[float, float]]:
    """Centres (y, x) of the 4-connected blobs of a boolean image."""
    import cv2

    n, _, stats, centres = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    return [
        (float(c[1]), float(c[0]))
        for c, s in zip(centres[1:], stats[1:], strict=True)
        if s[cv2.CC_STAT_AREA] >= 2
    ]


def read_bricks(frame: np.ndarray) -> BricksObjects:
    """The objects of one (64, 64, 3) uint8 Bricks frame.

    >>> from worldsim_envs.bricks import BricksEnv
    >>> o = read_bricks(BricksEnv().reset(seed=0)[0])
    >>> len(o.balls), o.paddle is not None, int(o.bricks.sum()), o.lives
    (1, True, 60, 3)
    """
    g = game
    field = frame[g.TOP :, g.WALL : g.SIZE - g.WALL]
    balls = [(y + g.TOP, x + g.WALL) for y, x in _blobs(_near(field, g.BALL_COLOR))]
    row = _near(frame[g.PADDLE_Y : g.PADDLE_Y + g.PADDLE_H], g.PADDLE_COLOR).any(0)
    cols = np.flatnonzero(row)
    paddle = float(cols[0]) if len(cols) >= g.PADDLE_W // 2 else None
    bricks = np.zeros((g.BRICK_ROWS, g.BRICK_COLS), bool)
    for r in range(g.BRICK_ROWS):
        y = g.BRICK_Y0 + r * g.BRICK_H
        for c in range(g.BRICK_COLS):
            x = g.WALL + c * g.BRICK_W
            cell = frame[y : y + g.BRICK_H - 1, x : x + g.BRICK_W - 1]
            bricks[r, c] = _near(cell, g.ROW_COLORS[r]).mean() > 0.5
    lives = sum(
        _near(frame[2:4, g.SIZE - 2 - 4 * (i + 1) : g.SIZE - 2 - 4 * i - 1], g.PADDLE_COLOR).mean()
        > 0.5
        for i in range(5)
    )
    return BricksObjects(balls, paddle, bricks, int(lives))


def bricks_violations(before: BricksObjects, after: BricksObjects) -> list[str]:
    """The rules a transition breaks (empty: it keeps them all)."""
    g, broken = game, []
    if len(after.balls) != 1:
        broken.append("one ball")
    if after.paddle is None:
        broken.append("one paddle")
    elif before.paddle is not None and abs(after.paddle - before.paddle) > g.PADDLE_SPEED + 1:
        broken.append("paddle speed")
    served = after.lives == before.lives - 1
    if after.lives > before.lives or after.lives < before.lives - 1:
        broken.append("lives")
    new_wall = after.bricks.all() and before.bricks.sum() <= 2
    if (after.bricks & ~before.bricks).any() and not new_wall:
        broken.append("bricks come back")
    if len(before.balls) == 1 and len(after.balls) == 1 and not served:
        (y0, x0), (y1, x1) = before.balls[0], after.balls[0]
        if max(abs(y1 - y0), abs(x1 - x0)) > 2.6 + g.PADDLE_SPEED + 1:  # top speed, or carried
            broken.append("ball jump")
    if served and len(after.balls) == 1 and after.paddle is not None:
        y, x = after.balls[0]
        if not (
            abs(y - (g.PADDLE_Y - 1)) <= 2
            and after.paddle - 1 <= x <= after.paddle + g.PADDLE_W + 1
        ):
            broken.append("serve")
    return broken


def rule_scores(frames: np.ndarray, actions: np.ndarray | None = None) -> dict:
    """Bricks rollouts (N, T, 64, 64, 3) uint8 -> the share of transitions that keep every
    rule, and how often each rule was broken (the rules need no actions)."""
    return _score([[bricks_violations(a, b) for a, b in _pairs(r, read_bricks)] for r in frames])


def _pairs(rollout: np.ndarray, read) -> list:
    objects = [read(f) for f in rollout]
    return list(zip(objects, objects[1:], strict=False))


def _score(broken_per_rollout: list[list[list[str]]]) -> dict:
    """Per rollout, per transition, the rules it broke -> the share kept and counts."""
    counts: dict[str, int] = {}
    kept = total = 0
    for per_step in broken_per_rollout:
        for broken in per_step:
            total += 1
            kept += not broken
            for rule in broken:
                counts[rule] = counts.get(rule, 0) + 1
    return {"kept": kept / max(total, 1), "transitions": total, "broken": counts}


_MAZE_TOLERANCE = 12  # colour distance (sum over RGB) from the row's ceiling/floor = a wall
_MAZE_BACKGROUND = maze.PALETTE[maze.BACKGROUND_INDEX].astype(np.int32)  # (64, 64, 3)
_MAZE_CENTRED = 0.85  # share of columns whose wall span must sit on the horizon (real: >= 0.89)


class MazeView(NamedTuple):
    """What one Maze frame shows: the wall height of each column (64,) in pixels, and the
    share of columns that are one wall span centred on the horizon (within 3 pixels)."""

    heights: np.ndarray
    centred: float


def read_maze(frame: np.ndarray) -> MazeView:
    """The wall profile of one (64, 64, 3) uint8 Maze frame.

    >>> from worldsim_envs.maze import MazeEnv
    >>> v = read_maze(MazeEnv().reset(seed=0)[0])
    >>> v.heights.shape, v.centred >= _MAZE_CENTRED
    ((64,), True)
    """
    wall = np.abs(frame.astype(np.int32) - _MAZE_BACKGROUND).sum(-1) >= _MAZE_TOLERANCE
    size = wall.shape[0]
    seen = wall.any(0)
    top = np.where(seen, wall.argmax(0), size // 2)
    bottom = np.where(seen, size - 1 - wall[::-1].argmax(0), size // 2 - 1)
    one_span = wall.sum(0) == bottom - top + 1
    on_horizon = np.abs(top - (size - 1 - bottom)) <= 3
    return MazeView((bottom - top + 1).astype(np.float64), float((one_span & on_horizon).mean()))


def _shift_error(before: np.ndarray, after: np.ndarray, shift: int) -> float:
    """Mean difference of two wall profiles when `after`'s column x shows `before`'s x + shift."""
    n = len(before)
    if shift >= 0:
        return float(np.abs(after[: n - shift] - before[shift:]).mean())
    return float(np.abs(after[-shift:] - before[: n + shift]).mean())


def maze_violations(before: MazeView, after: MazeView, action: int) -> list[str]:
    """The rules a Maze transition under `action` breaks (empty: it keeps them all)."""
    broken = []
    if after.centred < _MAZE_CENTRED:
        broken.append("walls centred")
    if action == 0 and np.abs(after.heights - before.heights).mean() > 1.0:
        broken.append("still when idle")
    if action in (3, 4):  # a turn of pi/12 slides the scene by ~15 columns
        way = 1 if action == 4 else -1
        right = min(_shift_error(before.heights, after.heights, way * s) for s in range(4, 25))
        wrong = min(_shift_error(before.heights, after.heights, -way * s) for s in range(25))
        if wrong < right - 0.5:  # the view moved the other way (or not at all)
            broken.append("turn direction")
    return broken


def maze_rule_scores(frames: np.ndarray, actions: np.ndarray) -> dict:
    """Maze rollouts (N, T, 64, 64, 3) uint8 played with `actions` (N, >= T-1) -> the share
    of transitions that keep every rule, and how often each rule was broken."""
    return _score(
        [
            [
                maze_violations(a, b, int(act))
                for (a, b), act in zip(_pairs(r, read_maze), acts, strict=False)
            ]
            for r, acts in zip(frames, actions, strict=True)
        ],
    )


CHECKERS = {"worldsim/Bricks-v0": rule_scores, "worldsim/Maze-v0": maze_rule_scores}
"""Games with a rule checker, by Gymnasium id: each takes rollouts (N, T, 64, 64, 3) and the
actions they were played with (N, T - 1)."""


def sticky_actions(n: int, steps: int, num_actions: int, seed: int) -> np.ndarray:
    """(n, steps) sticky-random actions: each held for 1 to 4 steps.

    >>> a = sticky_actions(2, 50, 4, seed=0)
    >>> a.shape, int(a.min()) >= 0, int(a.max()) < 4
    ((2, 50), True, True)
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, steps), np.int64)
    for i in range(n):
        t = 0
        while t < steps:
            k = int(rng.integers(1, 5))
            out[i, t : t + k] = rng.integers(num_actions)
            t += k
    return out


def dream_play(world, actions: np.ndarray, seed: int) -> np.ndarray:
    """Frames (n, steps+1, H, W, 3) uint8 of a `World` played from its first n starts with
    `actions` (n, steps), never reset (a lost game is played on, as the world draws it)."""
    import torch

    b = world.bundle
    n = len(actions)
    idx = torch.arange(n) % len(b.start_frames)
    world.reset(b.start_frames[idx], b.start_actions[idx])
    gens = [torch.Generator(world.device).manual_seed(seed + i) for i in range(n)]
    frames = [world.observation().cpu().numpy()]
    for t in range(actions.shape[1]):
        out = world.step(torch.from_numpy(actions[:, t]), gens)
        frames.append(out.frames.cpu().numpy())
    return np.stack(frames, axis=1)


def real_play(env, actions: np.ndarray, seed: int) -> list[np.ndarray]:
    """Frames of the real game played with `actions` (n, steps), each row one episode from
    its own seed (stopped where the game ends)."""
    out = []
    for i, row in enumerate(actions):
        frames = [env.reset(seed=seed + i)[0]]
        for a in row:
            obs, _, term, trunc, _ = env.step(int(a))
            frames.append(obs)
            if term or trunc:
                break
        out.append(np.stack(frames))
    return out


def nearest_real_distance(frames: np.ndarray, bank: np.ndarray, size: int = 16) -> np.ndarray:
    """For any game: how far each frame (..., H, W, 3) uint8 is from the nearest frame of a
    bank of real ones (M, H, W, 3), as the RMS difference of the two at `size` x `size` (in
    levels). A world whose frames stay like the game's stays near the bank; one that drifts
    into pictures the game never shows moves away from it, whatever the real future was.

    >>> bank = np.zeros((3, 8, 8, 3), np.uint8); bank[1] = 10
    >>> nearest_real_distance(np.full((2, 8, 8, 3), 10, np.uint8), bank, size=4).tolist()
    [0.0, 0.0]
    """
    import cv2
    import torch

    def small(x: np.ndarray) -> torch.Tensor:
        flat = x.reshape(-1, *x.shape[-3:])
        out = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in flat])
        return torch.from_numpy(out.reshape(len(flat), -1).astype(np.float32))

    q, b = small(frames), small(bank)
    best = torch.cat(
        [torch.cdist(q[i : i + 1024], b).min(dim=1).values for i in range(0, len(q), 1024)]
    )
    return (best / (3 * size * size) ** 0.5).numpy().reshape(frames.shape[:-3])
