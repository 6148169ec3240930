"""Maze: a first-person raycast maze at 64x64 with brick walls and a green exit."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SIZE = 64
TEX = 16  # texture side in texels
PLANE = 0.66  # camera-plane half-width: a ~66 degree field of view
TURNS = 24  # headings per full turn, so each turn is pi/12
MOVE = 0.25  # tiles per FORWARD or BACK step
RADIUS = 0.2  # the player's half-width, so the camera never clips into a wall
SHADES = 12  # distance-fog levels; level i is 0.88**i as bright
SIDE_SHADE = 0.7  # faces hit on a y-side are darker so corners read clearly
CAMERA_X = (2 * np.arange(SIZE) + 1) / SIZE - 1  # (W,) -1 at the left edge, +1 at the right
ROWS = np.arange(SIZE)[:, None] + 0.5  # (H, 1) pixel-centre rows
STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0))  # (drow, dcol) for headings 0, 6, 12, 18: E S W N
ANGLES = 2 * np.pi * np.arange(TURNS) / TURNS  # y points down the map, so +angle turns right
DIRS = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)  # (TURNS, 2) as (x, y)


def _textures() -> np.ndarray:
    """Brick and exit textures, (2, TEX, TEX, 3) float; fixed, as they are part of the game."""
    y, x = np.mgrid[0:TEX, 0:TEX]
    course = y // 4
    shifted = (x + 4 * (course % 2)) % TEX  # running bond: odd courses offset half a brick
    tint = np.random.default_rng(7).uniform(0.8, 1.1, size=8)  # per-brick colour variation
    brick = np.array([150.0, 62, 44]) * tint[course * 2 + shifted // 8][..., None]
    brick[(y % 4 == 3) | (shifted % 8 == 7)] = (118, 114, 106)
    exit_ = np.broadcast_to(np.array([48.0, 180, 80]), (TEX, TEX, 3)).copy()
    exit_[(y % 8 == 0) | (x % 8 == 0)] = (150, 240, 150)
    exit_[(y % 8 == 7) | (x % 8 == 7)] = (20, 90, 40)
    return np.stack([brick, exit_])


def _background() -> np.ndarray:
    """Ceiling and floor gradients, darkest at the horizon, (H, W, 3) float."""
    t = np.abs(ROWS[:, 0] - SIZE / 2) / (SIZE / 2)  # 0 at the horizon, 1 at the edges
    ceiling = np.array([14.0, 16, 28]) + t[:, None] * np.array([36.0, 40, 60])
    floor = np.array([26.0, 24, 20]) + t[:, None] * np.array([84.0, 74, 56])
    rows = np.where(ROWS < SIZE / 2, ceiling, floor)
    return np.broadcast_to(rows[:, None], (SIZE, SIZE, 3))


def _palette() -> np.ndarray:
    """Every texel under every shading, then the background: one gather draws a frame."""
    side = np.array([1.0, SIDE_SHADE])[:, None]
    shade = side * 0.88 ** np.arange(SHADES)  # (2, SHADES)
    bank = _textures()[:, None, None] * shade[None, :, :, None, None, None]
    table = np.concatenate([bank.reshape(-1, 3), _background().reshape(-1, 3)])
    return np.round(table).astype(np.uint8)


def _carve(n: int, rng: np.random.Generator) -> np.ndarray:
    """A perfect maze by randomized depth-first search, as a (2n+1, 2n+1) map, True = wall."""
    walls = np.ones((2 * n + 1, 2 * n + 1), bool)
    seen = np.zeros((n, n), bool)
    stack = [(0, 0)]
    seen[0, 0], walls[1, 1] = True, False
    while stack:
        r, c = stack[-1]
        nexts = [(r + a, c + b) for a, b in STEPS if 0 <= r + a < n and 0 <= c + b < n]
        nexts = [cell for cell in nexts if not seen[cell]]
        if not nexts:
            stack.pop()
            continue
        nr, nc = nexts[rng.integers(len(nexts))]
        seen[nr, nc] = True
        walls[2 * nr + 1, 2 * nc + 1] = walls[r + nr + 1, c + nc + 1] = False
        stack.append((nr, nc))
    return walls


def _distances(walls: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Steps along the maze from `start` to every open tile (-1 on walls), by BFS."""
    dist = np.full(walls.shape, -1)
    dist[start], queue = 0, [start]
    for r, c in queue:  # the list grows while we walk it: a FIFO queue
        for a, b in STEPS:
            if not walls[r + a, c + b] and dist[r + a, c + b] < 0:
                dist[r + a, c + b] = dist[r, c] + 1
                queue.append((r + a, c + b))
    return dist


def _first_crossing(grid, p, q, d, e):
    """Each ray's first wall entered across the grid lines normal to one axis, testing all
    crossings at once. p, q: the player along / across that axis; d, e: ray components (W,);
    `grid` is [across, along]. Returns (t, q at the hit, tile along, tile across), each (W,);
    t is the perpendicular wall distance, as the rays are not normalised."""
    d = np.where(np.abs(d) < 1e-9, 1e-9, d)
    line = np.floor(p) + (d > 0)[:, None] + np.sign(d)[:, None] * np.arange(grid.shape[1])
    along = np.clip(line.astype(int) - (d < 0)[:, None], 0, grid.shape[1] - 1)  # (W, K)
    t = (line - p) / d[:, None]
    q_at = q + t * e[:, None]
    across = np.clip(q_at.astype(int), 0, grid.shape[0] - 1)
    hit = grid[across, along]
    k, w = hit.argmax(axis=1), np.arange(len(d))
    t_hit = np.where(hit[w, k], t[w, k], np.inf)
    return t_hit, q_at[w, k], along[w, k], across[w, k]


PALETTE = _palette()
BACKGROUND_INDEX = len(PALETTE) - SIZE * SIZE + np.arange(SIZE * SIZE).reshape(SIZE, SIZE)


class MazeEnv(gym.Env):
    """Find the exit of a maze seen in first person.

    ## Description
    A random perfect maze (`size` x `size` cells, one tile wide corridors between brick
    walls) is carved on every reset. The player starts in a corner cell; the exit is the
    dead end farthest along the maze, whose walls are green. The view is raycast at
    64x64 with textured walls, y-side faces darker and distant walls fogged.

    ## Action Space
    `Discrete(5)`: 0 NOOP, 1 FORWARD, 2 BACK, 3 TURN_LEFT, 4 TURN_RIGHT. Moves are a
    quarter tile and slide along walls; turns are pi/12.

    ## Observation Space
    `Box(0, 255, (64, 64, 3), uint8)`: the first-person view. `info` holds the player's
    `x`, `y` (in tiles) and `heading` (radians; y points down the map, so it turns clockwise).

    ## Rewards
    +1 on reaching the exit cell, 0 otherwise.

    ## Episode End
    Terminated on reaching the exit. Registered with a 500-step time limit.

    ## Arguments
    `size` (default 6): maze cells per side, at least 2. `render_mode`: `"rgb_array"` or `None`.

    >>> env = MazeEnv()
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype, sorted(info)
    ((64, 64, 3), dtype('uint8'), ['heading', 'x', 'y'])
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    ACTION_MEANINGS = ("NOOP", "FORWARD", "BACK", "TURN_LEFT", "TURN_RIGHT")

    def __init__(self, size: int = 6, render_mode: str | None = None):
        if size < 2:
            raise ValueError(f"size must be at least 2, got {size}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.size = size
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(5)
        self.observation_space = spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)

    def get_action_meanings(self) -> list[str]:
        return list(self.ACTION_MEANINGS)

    def get_keys_to_action(self) -> dict[tuple[int, ...], int]:
        from worldsim_envs.keymaps import keys_to_action

        return keys_to_action("maze")

    # --- state -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.walls = _carve(self.size, self.np_random)
        last = 2 * self.size - 2  # from the first cell tile to the last
        row, col = (int(i) * last + 1 for i in self.np_random.integers(0, 2, size=2))
        from_start = _distances(self.walls, (row, col))
        # The farthest tile of a tree is a dead end, so the exit shows three green faces.
        goal_row, goal_col = np.unravel_index(from_start.argmax(), from_start.shape)
        self.goal = (int(goal_row), int(goal_col))
        self._to_goal = _distances(self.walls, self.goal)
        self.x, self.y = col + 0.5, row + 0.5
        open_ways = [i for i, (a, b) in enumerate(STEPS) if not self.walls[row + a, col + b]]
        self.heading = TURNS // 4 * int(self.np_random.choice(open_ways))
        self._axis = self.heading
        self._decided_at: tuple[int, int] | None = None
        self._visits = np.zeros(self.walls.shape, int)
        return self._observe(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, 5), got {action!r}")
        action = int(action)
        if action in (1, 2):
            self._move(MOVE if action == 1 else -MOVE)
        elif action in (3, 4):
            self.heading = (self.heading + (1 if action == 4 else -1)) % TURNS
        terminated = (int(self.y), int(self.x)) == self.goal
        return self._observe(), float(terminated), terminated, False, self._info()

    def _move(self, dist: float):
        """Move along the heading one axis at a time, so a blocked axis slides on the other."""
        for axis, delta in enumerate(DIRS[self.heading] * dist):
            pos = [self.x, self.y]
            pos[axis] += delta
            if not self._free(*pos):  # stop flush against the wall rather than short of it
                edge = int(pos[axis] + np.sign(delta) * RADIUS)
                pos[axis] = edge - RADIUS - 1e-6 if delta > 0 else edge + 1 + RADIUS + 1e-6
            self.x, self.y = float(pos[0]), float(pos[1])

    def _free(self, x: float, y: float) -> bool:
        r0, r1, c0, c1 = int(y - RADIUS), int(y + RADIUS), int(x - RADIUS), int(x + RADIUS)
        return not self.walls[r0 : r1 + 1, c0 : c1 + 1].any()

    def _info(self) -> dict:
        return {"x": self.x, "y": self.y, "heading": float(ANGLES[self.heading])}

    # --- drawing -----------------------------------------------------------------------
    def _cast(self):
        """One ray per column: perpendicular distance, y-side flag, texture u, exit flag."""
        dir_x, dir_y = DIRS[self.heading]
        ray_x, ray_y = dir_x - dir_y * PLANE * CAMERA_X, dir_y + dir_x * PLANE * CAMERA_X
        tx, yx, colx, rowx = _first_crossing(self.walls, self.x, self.y, ray_x, ray_y)
        ty, xy, rowy, coly = _first_crossing(self.walls.T, self.y, self.x, ray_y, ray_x)
        y_side = ty < tx
        u = np.where(y_side, xy, yx) % 1.0
        u = np.where(np.where(y_side, ray_y > 0, ray_x < 0), 1 - u, u)  # keep textures unmirrored
        # The face belongs to the open tile just before the crossed line.
        row = np.where(y_side, rowy - np.sign(ray_y), rowx)
        col = np.where(y_side, coly, colx - np.sign(ray_x))
        exit_ = (row == self.goal[0]) & (col == self.goal[1])
        return np.minimum(tx, ty), y_side, u, exit_

    def _observe(self) -> np.ndarray:
        dist, y_side, u, exit_ = self._cast()
        self._ahead = float(dist[SIZE // 2 - 1 : SIZE // 2 + 1].min())
        height = SIZE / np.maximum(dist, 1e-3)
        v = (ROWS - (SIZE - height) / 2) / height  # (H, W) texture v, in [0, 1) on a wall
        level = np.minimum(dist.astype(int), SHADES - 1)
        texture = (exit_ * 2 + y_side) * SHADES + level
        texel_col = np.minimum((u * TEX).astype(int), TEX - 1)
        texel_row = np.clip((v * TEX).astype(int), 0, TEX - 1)
        index = (texture * TEX + texel_row) * TEX + texel_col
        index = np.where((v >= 0) & (v < 1), index, BACKGROUND_INDEX)
        self._frame = np.take(PALETTE, index, axis=0)
        return self._frame.copy()

    def render(self):
        if self.render_mode == "rgb_array":
            return self._frame.copy()
        return None

    # --- for the scripted coverage policy ----------------------------------------------
    def autopilot_action(self, rng: np.random.Generator) -> int:
        """Walk the corridors, picking a way at each tile centre (least visited, or towards
        the exit), with noise so the data also covers idling, backing, glances and bumps.
        """
        if rng.random() < 0.06:
            return int(rng.integers(0, 5))
        if rng.random() < 0.005:  # glance down a random axis, wall or not
            self._axis = TURNS // 4 * int(rng.integers(0, 4))
        if self.heading == self._axis and self._ahead < 0.6 and rng.random() < 0.7:
            return 1 if rng.random() < 0.85 else 2  # push into the wall a while, or back off
        offset = np.array([self.x % 1, self.y % 1]) - 0.5
        tile = (int(self.y), int(self.x))
        if max(abs(offset)) < 0.2 and tile != self._decided_at:
            self._decided_at = tile
            self._visits[tile] += 1
            self._axis = self._choose_axis(rng, tile)
        # Steer back to the corridor's centre line, or corners would snag the player.
        side = offset @ (-DIRS[self._axis][1], DIRS[self._axis][0])  # > 0: right of it
        target = (self._axis - int(np.sign(side)) * (abs(side) > 0.15)) % TURNS
        if self.heading == target and self._ahead < MOVE + RADIUS + 0.05:  # arrived off-centre
            target = self._axis = self._choose_axis(rng, tile)
        if self.heading != target:
            return 4 if 0 < (target - self.heading) % TURNS <= TURNS // 2 else 3
        return 1

    def _choose_axis(self, rng: np.random.Generator, tile: tuple[int, int]) -> int:
        """An open axis heading from `tile`; turns back only at dead ends."""
        ways = [i for i, (a, b) in enumerate(STEPS) if not self.walls[tile[0] + a, tile[1] + b]]
        back = (round(self.heading / (TURNS // 4)) + 2) % 4
        ways = [i for i in ways if i != back] or ways
        nexts = tuple(np.array([(tile[0] + STEPS[i][0], tile[1] + STEPS[i][1]) for i in ways]).T)
        score = self._to_goal[nexts] if rng.random() < 0.5 else self._visits[nexts]
        return TURNS // 4 * ways[int(np.argmin(score + rng.random(len(ways))))]
