"""The play loop: any Gymnasium env played live, keys -> actions, at most `fps` steps a
second, with a callback after every step (the shape of Gymnasium's
`utils.play.play(env, callback=...)`); input handling is `controls.KeyboardInput`'s."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, SupportsFloat, cast

import gymnasium as gym
import numpy as np

from worldsim.play.controls import KeyboardInput

if TYPE_CHECKING:
    from worldsim.sim.window import Window

StepCallback = Callable[[Any, Any, int, SupportsFloat, bool, bool, dict], None]
"""callback(obs_t, obs_tp1, action, reward, terminated, truncated, info), after each step."""


class _KeyedEnv(Protocol):
    """An env that maps keys to actions (the built-in games and worlds do)."""

    def get_keys_to_action(self) -> dict[tuple[int, ...], int]: ...


class PlayLoop:
    """Plays `env` one frame at a time: the frame's events (`tick(events)`) give commands and
    the held keys, whose action (`keys_to_action`, else the env's `get_keys_to_action()`)
    steps the env once, unless paused; `callback` then sees the step, and an episode that
    ended restarts at once. `draw(loop)` shows the frame; by default a window shows
    `env.render()`, so the env then needs `render_mode="rgb_array"`.

    Commands (`controls.COMMANDS`): quit, reset, pause, step (one step while paused);
    `commands` adds handlers by name or replaces these (its `reset` also runs when an
    episode ends); commands without a handler do nothing. `actions`, when given, chooses
    the actions instead of the keyboard (`worldsim.policies`); play then stops after
    `frames` frames (0: no limit) or once `actions.exhausted`.

    >>> import numpy as np
    >>> env = gym.make("CartPole-v1", render_mode="rgb_array")
    >>> steps = []
    >>> loop = PlayLoop(env, {(): 0}, callback=lambda *step: steps.append(step), fps=0,
    ...                 actions=lambda: 1, frames=3, draw=lambda loop: None, seed=0)
    >>> loop.run(lambda: [])["frames"], [s[2] for s in steps], steps[1][0] is steps[0][1]
    (3, [1, 1, 1], True)
    """

    def __init__(
        self,
        env: gym.Env,
        keys_to_action: dict[tuple[int, ...], int] | None = None,
        *,
        callback: StepCallback | None = None,
        fps: int = 30,
        actions: Callable[[], int] | None = None,
        frames: int = 0,
        commands: Mapping[str, Callable[[], object]] | None = None,
        draw: Callable[[PlayLoop], object] | None = None,
        scale: int = 4,
        noop: int = 0,
        seed: int | None = None,
    ):
        if fps < 0 or frames < 0 or scale < 1:
            raise ValueError(
                f"need fps >= 0, frames >= 0, scale >= 1; got {fps}, {frames}, {scale}"
            )
        if keys_to_action is None:
            keys_to_action = cast(_KeyedEnv, env.unwrapped).get_keys_to_action()
        if draw is None and env.render_mode != "rgb_array":
            raise ValueError(
                f"the play window shows env.render(): make the env with render_mode='rgb_array' "
                f"(got {env.render_mode!r}), or give draw"
            )
        self.env, self.callback, self.fps_target = env, callback, fps
        self.actions, self.frames, self.scale = actions, frames, scale
        self.input = KeyboardInput(keys_to_action, noop)
        self.commands = {"reset": self.reset, "pause": self.pause, **(commands or {})}
        self.draw = draw or _show_render
        self.window: Window | None = None  # the default draw's
        self.paused, self.fps = False, 0.0
        self.obs, self.info = env.reset(seed=seed)
        self.t, self.ret = 0, 0.0

    def reset(self, **kwargs) -> None:
        """Restart the env (`kwargs`: its reset's seed and options)."""
        self.obs, self.info = self.env.reset(**kwargs)
        self.t, self.ret = 0, 0.0

    def pause(self) -> None:
        self.paused = not self.paused

    def step(self, action: int) -> None:
        """Step the env; tell the callback; restart an episode that ended."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs_t, self.obs, self.info = self.obs, obs, info
        self.t, self.ret = self.t + 1, self.ret + float(reward)
        if self.callback is not None:
            self.callback(obs_t, obs, action, reward, terminated, truncated, info)
        if terminated or truncated:
            self.commands["reset"]()

    def tick(self, events: Iterable) -> bool:
        """Handle one frame's events and advance the env; False when the player quits."""
        single = False
        for cmd in self.input.process(events):
            if cmd == "quit":
                return False
            single |= cmd == "step"
            handler = self.commands.get(cmd)
            if handler is not None:
                handler()
        if not self.paused or single:
            self.step(self.actions() if self.actions is not None else self.input.action())
        self.draw(self)
        return True

    def run(self, events_source: Callable[[], Iterable]) -> dict:
        """Tick with `events_source()` until quit (or the scripted actions end), at most
        `fps` times a second on a fixed schedule; returns the frames, seconds and frame rate
        achieved."""
        period = 1.0 / self.fps_target if self.fps_target else 0.0
        t0 = last = due = time.perf_counter()
        n = 0
        try:
            while self.tick(events_source()):
                n += 1
                due = max(due + period, time.perf_counter() - period)  # no drift, no bursts
                if period and due > time.perf_counter():
                    time.sleep(due - time.perf_counter())
                now = time.perf_counter()
                rate = 1 / max(now - last, 1e-6)
                self.fps, last = (0.9 * self.fps + 0.1 * rate if n > 1 else rate), now
                if self.actions is not None and self._scripted_end(n):
                    break
        finally:
            if self.window is not None:
                self.window.close()
                self.window = None
        elapsed = time.perf_counter() - t0
        return {"frames": n, "seconds": elapsed, "fps": n / elapsed if elapsed else 0.0}

    def _scripted_end(self, n: int) -> bool:
        return bool(self.frames and n >= self.frames or getattr(self.actions, "exhausted", False))


def _show_render(loop: PlayLoop) -> None:
    """The default draw: the env's `render()` in a window, `loop.scale` times larger."""
    from worldsim.sim.window import Window

    frame = loop.env.render()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"env.render() must return an RGB array, got {type(frame).__name__}")
    if loop.window is None:
        loop.window = Window(frame.shape[:2], loop.scale, "worldsim")
    pause = "  [paused]" if loop.paused else ""
    loop.window.show(frame, hud=f"{loop.fps:4.1f} fps  step {loop.t}  return {loop.ret:.0f}{pause}")
