"""A pygame window that shows frames scaled up with nearest-neighbour sampling."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
# SDL otherwise turns SIGINT and SIGTERM into a quit event that only an event loop sees: a
# script with a human-rendered env, or `timeout`/a service manager, could not stop it
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")


class Window:
    """Shows (H, W, 3) uint8 frames `scale` times larger, with optional HUD text below."""

    HUD_H = 36

    def __init__(
        self, size: tuple[int, int], scale: int = 8, caption: str = "worldsim", panels: int = 1
    ):
        import pygame

        pygame.init()
        self.pg, self.scale, self.size = pygame, scale, size
        h, w = size
        self.screen = pygame.display.set_mode((w * scale * panels, h * scale + self.HUD_H))
        pygame.display.set_caption(caption)
        self.font = pygame.font.Font(None, 20)

    def show(self, *frames: np.ndarray, hud: str = "") -> None:
        pg, (h, w) = self.pg, self.size
        self.screen.fill((0, 0, 0))
        for i, frame in enumerate(frames):
            surf = pg.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))
            self.screen.blit(
                pg.transform.scale(surf, (w * self.scale, h * self.scale)), (i * w * self.scale, 0)
            )
        if hud:
            self.screen.blit(self.font.render(hud, True, (230, 230, 230)), (6, h * self.scale + 10))
        pg.display.flip()

    def screenshot(self) -> np.ndarray:
        """What the window shows, (H, W, 3) uint8."""
        return self.pg.surfarray.array3d(self.screen).swapaxes(0, 1).copy()

    def close(self) -> None:
        self.pg.display.quit()
