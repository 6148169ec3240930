"""Keyboard maps of the built-in games, as data: pressed keys -> action index.

Keys are pygame constants; a combination is a sorted tuple, as in `gymnasium.utils.play`.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def keys_to_action(game: str) -> dict[tuple[int, ...], int]:
    """The key map of a built-in game, e.g. `keys_to_action("bricks")[(pygame.K_SPACE,)] == 1`."""
    import pygame

    maps = {
        "bricks": {
            (pygame.K_SPACE,): 1,
            (pygame.K_RIGHT,): 2,
            (pygame.K_LEFT,): 3,
        },
        "maze": {
            (pygame.K_UP,): 1,
            (pygame.K_DOWN,): 2,
            (pygame.K_LEFT,): 3,
            (pygame.K_RIGHT,): 4,
        },
    }
    if game not in maps:
        raise KeyError(f"no key map for game {game!r}; known: {sorted(maps)}")
    return {tuple(sorted(k)): v for k, v in maps[game].items()}
