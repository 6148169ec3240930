"""Bricks: a breakout-style arcade game drawn at 64x64 with crisp pixel sprites."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from worldsim_envs.font import draw_number

SIZE = 64
HUD_H = 7  # rows 0..6 hold the score and the lives
WALL = 2  # side and top wall thickness in pixels
TOP = HUD_H + WALL  # first row of the playing field
BRICK_W, BRICK_H = 6, 3  # cell size; the drawn brick leaves a 1 px gap right and below
BRICK_COLS, BRICK_ROWS, BRICK_Y0 = 10, 6, 14
PADDLE_W, PADDLE_H, PADDLE_Y = 8, 2, 58
PADDLE_SPEED = 3.0
BALL = 2
ROW_COLORS = np.array(
    [[200, 72, 72], [198, 108, 58], [180, 122, 48], [162, 162, 42], [72, 160, 72], [66, 72, 200]],
    dtype=np.uint8,
)
ROW_POINTS = (7, 7, 4, 4, 1, 1)  # top rows are worth more, as in the arcade original
WALL_COLOR = np.array([142, 142, 142], np.uint8)
PADDLE_COLOR = np.array([200, 72, 72], np.uint8)
BALL_COLOR = np.array([236, 236, 236], np.uint8)
HUD_COLOR = np.array([200, 200, 200], np.uint8)


class BricksEnv(gym.Env):
    """Break the wall of bricks with a ball, keeping it in play with the paddle.

    ## Description
    A breakout-style game at 64x64 pixels. The ball waits on the paddle until FIRE launches
    it; it bounces off the walls, the bricks (which break) and the paddle, whose motion and
    hit position steer it. Clearing the wall brings a new one and a faster ball.

    ## Action Space
    `Discrete(4)`: 0 NOOP, 1 FIRE, 2 RIGHT, 3 LEFT.

    ## Observation Space
    `Box(0, 255, (64, 64, 3), uint8)`: the screen, with the score top-left and the lives
    top-right.

    ## Rewards
    7, 4 or 1 points per brick, by row (top rows are worth more).

    ## Episode End
    Terminated when the last life is lost. Registered with a 2,000-step time limit.

    ## Arguments
    `lives` (default 3): balls per game. `render_mode`: `"rgb_array"` or `None`.

    >>> env = BricksEnv()
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype, info["lives"]
    ((64, 64, 3), dtype('uint8'), 3)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    ACTION_MEANINGS = ("NOOP", "FIRE", "RIGHT", "LEFT")

    def __init__(self, lives: int = 3, render_mode: str | None = None):
        if lives < 1:
            raise ValueError(f"lives must be at least 1, got {lives}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.max_lives = lives
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(4)
        self.observation_space = spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self._frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        self._static = np.zeros((SIZE, SIZE, 3), np.uint8)

    def get_action_meanings(self) -> list[str]:
        return list(self.ACTION_MEANINGS)

    def get_keys_to_action(self) -> dict[tuple[int, ...], int]:
        from worldsim_envs.keymaps import keys_to_action

        return keys_to_action("bricks")

    # --- state -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.lives = self.max_lives
        self.score = 0
        self.level = 0
        self.bricks = np.ones((BRICK_ROWS, BRICK_COLS), bool)
        self.paddle_x = float(self.np_random.integers(WALL, SIZE - WALL - PADDLE_W + 1))
        self._serve()
        self._redraw_static()
        return self._observe(), self._info()

    def _serve(self):
        """Put the ball back on the paddle, waiting for FIRE."""
        self.attached = True
        self.ball_vx = self.ball_vy = 0.0
        self._stick_ball()

    def _stick_ball(self):
        self.ball_x = self.paddle_x + PADDLE_W / 2 - BALL / 2
        self.ball_y = float(PADDLE_Y - BALL)

    def _speed(self) -> float:
        return min(1.4 + 0.02 * (self.bricks.size - self.bricks.sum()) + 0.3 * self.level, 2.6)

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, 4), got {action!r}")
        action = int(action)
        move = {2: 1.0, 3: -1.0}.get(action, 0.0) * PADDLE_SPEED
        old_x = self.paddle_x
        self.paddle_x = float(np.clip(self.paddle_x + move, WALL, SIZE - WALL - PADDLE_W))
        paddle_v = self.paddle_x - old_x
        reward = 0
        if self.attached:
            self._stick_ball()
            if action == 1:
                self.attached = False
                angle = self.np_random.uniform(-0.6, 0.6)
                self.ball_vx, self.ball_vy = (
                    np.sin(angle) * self._speed(),
                    -np.cos(angle) * self._speed(),
                )
        else:
            reward = self._advance_ball(paddle_v)
        terminated = False
        if not self.attached and self.ball_y >= SIZE - BALL:
            self.lives -= 1
            terminated = self.lives == 0
            self._serve()
            self._redraw_static()
        return self._observe(), float(reward), terminated, False, self._info()

    def _advance_ball(self, paddle_v: float) -> int:
        """Move the ball in sub-steps of at most one pixel so it never tunnels."""
        reward = 0
        n = int(np.ceil(max(abs(self.ball_vx), abs(self.ball_vy))))
        for _ in range(n):
            self.ball_x += self.ball_vx / n
            if self.ball_x < WALL or self.ball_x > SIZE - WALL - BALL:
                self.ball_x = float(np.clip(self.ball_x, WALL, SIZE - WALL - BALL))
                self.ball_vx = -self.ball_vx
            elif (points := self._hit_brick()) > 0:
                reward += points
                self.ball_x -= self.ball_vx / n
                self.ball_vx = -self.ball_vx
            self.ball_y += self.ball_vy / n
            if self.ball_y < TOP:
                self.ball_y = float(TOP)
                self.ball_vy = -self.ball_vy
            elif (points := self._hit_brick()) > 0:
                reward += points
                self.ball_y -= self.ball_vy / n
                self.ball_vy = -self.ball_vy
            elif self.ball_vy > 0 and self._on_paddle():
                self._bounce_off_paddle(paddle_v)
        if self.bricks.sum() == 0:
            self.level += 1
            self.bricks[:] = True
            self._redraw_static()
        return reward

    def _on_paddle(self) -> bool:
        y0, y1 = int(self.ball_y), int(self.ball_y) + BALL
        x0, x1 = int(self.ball_x), int(self.ball_x) + BALL
        px = int(self.paddle_x)
        return y1 > PADDLE_Y and y0 < PADDLE_Y + PADDLE_H and x1 > px and x0 < px + PADDLE_W

    def _bounce_off_paddle(self, paddle_v: float):
        # Where the ball lands on the paddle sets the angle; the paddle's motion adds spin.
        offset = (self.ball_x + BALL / 2 - (self.paddle_x + PADDLE_W / 2)) / (PADDLE_W / 2 + 1)
        angle = np.clip(0.9 * offset + 0.12 * paddle_v, -1.1, 1.1)
        speed = self._speed()
        self.ball_vx, self.ball_vy = np.sin(angle) * speed, -np.cos(angle) * speed
        self.ball_y = float(PADDLE_Y - BALL)

    def _hit_brick(self) -> int:
        """Break the first brick the ball overlaps; return its points (0 if none)."""
        x0, y0 = int(self.ball_x), int(self.ball_y)
        for y in (y0, y0 + BALL - 1):
            row = (y - BRICK_Y0) // BRICK_H
            if not 0 <= row < BRICK_ROWS or (y - BRICK_Y0) % BRICK_H == BRICK_H - 1:
                continue
            for x in (x0, x0 + BALL - 1):
                col = (x - WALL) // BRICK_W
                if 0 <= col < BRICK_COLS and self.bricks[row, col]:
                    self.bricks[row, col] = False
                    self.score += ROW_POINTS[row]
                    self._redraw_static()
                    return ROW_POINTS[row]
        return 0

    # --- drawing -----------------------------------------------------------------------
    def _redraw_static(self):
        """Redraw what changes only on events: walls, bricks, score and lives."""
        s = self._static
        s[:] = 0
        s[HUD_H:TOP, :] = WALL_COLOR
        s[HUD_H:, :WALL] = WALL_COLOR
        s[HUD_H:, SIZE - WALL :] = WALL_COLOR
        for row, col in zip(*np.nonzero(self.bricks), strict=True):
            y, x = BRICK_Y0 + row * BRICK_H, WALL + col * BRICK_W
            s[y : y + BRICK_H - 1, x : x + BRICK_W - 1] = ROW_COLORS[row]
        draw_number(s, self.score % 1000, x=1, y=1, color=HUD_COLOR, digits=3)
        for i in range(self.lives):
            x = SIZE - 2 - 4 * (i + 1)
            s[2:4, x : x + 3] = PADDLE_COLOR

    def _observe(self) -> np.ndarray:
        f = self._frame
        np.copyto(f, self._static)
        px = int(self.paddle_x)
        f[PADDLE_Y : PADDLE_Y + PADDLE_H, px : px + PADDLE_W] = PADDLE_COLOR
        bx, by = int(self.ball_x), int(self.ball_y)
        f[by : by + BALL, bx : bx + BALL] = BALL_COLOR
        return f.copy()

    def _info(self) -> dict:
        return {"lives": self.lives, "score": self.score}

    def render(self):
        if self.render_mode == "rgb_array":
            return self._observe()
        return None

    # --- for the scripted coverage policy ----------------------------------------------
    def autopilot_action(self, rng: np.random.Generator) -> int:
        """A paddle that tracks the ball, aiming at a random spot of the paddle each rally."""
        if self.attached:
            return 1 if rng.random() < 0.3 else int(rng.integers(0, 4))
        if self.ball_vy < 0 and getattr(self, "_aim_for", None) != self.ball_vy:
            self._aim_for, self._aim = self.ball_vy, rng.uniform(-PADDLE_W / 2, PADDLE_W / 2)
        target = self.ball_x + BALL / 2 - PADDLE_W / 2 + getattr(self, "_aim", 0.0)
        if self.ball_vy < 0:  # ball going up: drift back towards the middle
            target = 0.5 * target + 0.5 * (SIZE / 2 - PADDLE_W / 2)
        delta = target - self.paddle_x
        if abs(delta) < PADDLE_SPEED / 2:
            return 0
        return 2 if delta > 0 else 3
