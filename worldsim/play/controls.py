"""Keyboard input for play, separate from the game loop so it is testable with synthetic events.

Held keys are tracked from KEYDOWN/KEYUP events (pygame's `key.get_pressed()` ignores posted
events); the game's key map (data: sorted key tuples -> action) turns them into an action.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pygame  # noqa: E402

# control keys of the play window -> command
COMMANDS = {
    pygame.K_ESCAPE: "quit",
    pygame.K_q: "quit",
    pygame.K_r: "reset",
    pygame.K_p: "pause",
    pygame.K_n: "step",
    pygame.K_TAB: "sampler",
    pygame.K_g: "real",
    pygame.K_c: "record",
}
HELP = "arrows/space: play  R reset  P pause  N step  TAB sampler  G real game  C record  Q quit"


class KeyboardInput:
    """Turns pygame events into the current action and one-shot commands."""

    def __init__(self, keys_to_action: dict[tuple[int, ...], int], noop: int = 0):
        self.keys_to_action = {tuple(sorted(k)): a for k, a in keys_to_action.items()}
        self.game_keys = {k for combo in self.keys_to_action for k in combo}
        self.noop = noop
        self.held: dict[int, None] = {}  # held keys, in the order they were pressed

    def process(self, events) -> list[str]:
        """Update the held keys; return the commands of this batch of events, in order."""
        commands = []
        for e in events:
            if e.type == pygame.QUIT:
                commands.append("quit")
            elif e.type == pygame.KEYDOWN:
                if e.key in COMMANDS:
                    commands.append(COMMANDS[e.key])
                elif e.key in self.game_keys:
                    self.held.pop(e.key, None)
                    self.held[e.key] = None
            elif e.type == pygame.KEYUP:
                self.held.pop(e.key, None)
        return commands

    def action(self) -> int:
        """The action of the held keys: their exact combination, else the most recently
        mapped single key among them, else NOOP."""
        combo = tuple(sorted(self.held))
        if combo in self.keys_to_action:
            return self.keys_to_action[combo]
        singles = [self.keys_to_action[(k,)] for k in self.held if (k,) in self.keys_to_action]
        return singles[-1] if singles else self.noop
