"""A Stable-Baselines3 VecEnv over batched learned worlds (`pip install 'worldsim[rl]'`).

SB3 has no adapter for Gymnasium's VectorEnv; this one steps a WorldModelVectorEnv in
same-step autoreset mode, which is what SB3 expects, and reports final observations and
time-limit truncation the SB3 way (`terminal_observation`, `TimeLimit.truncated`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv
except ImportError:  # pragma: no cover - the hint is the point
    raise ImportError(
        "the SB3 bridge needs stable-baselines3: pip install 'worldsim[rl]'"
    ) from None

from worldsim.sim.vector_env import WorldModelVectorEnv


def _same(a: dict | None, b: dict | None) -> bool:
    """Whether two reset options dicts are equal (their values may be arrays)."""
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class WorldVecEnv(VecEnv):
    """`WorldVecEnv(num_envs=8, world="bricks", ...)`: arguments as WorldModelVectorEnv.

    >>> # PPO("CnnPolicy", WorldVecEnv(num_envs=8, world="path/to/world")).learn(10_000)
    """

    def __init__(self, num_envs: int = 8, **kwargs):
        self.venv = WorldModelVectorEnv(num_envs, autoreset_mode="same_step", **kwargs)
        self.render_mode = self.venv.render_mode
        super().__init__(
            num_envs, self.venv.single_observation_space, self.venv.single_action_space
        )
        self._actions = np.zeros(num_envs, np.int64)

    def reset(self) -> np.ndarray:
        seeds = None if all(s is None for s in self._seeds) else self._seeds
        options = [o or None for o in self._options]
        if not all(_same(o, options[0]) for o in options):
            raise ValueError(
                "the batched worlds take one reset options dict for all envs; "
                "these differ between envs"
            )
        obs, _ = self.venv.reset(seed=seeds, options=options[0])
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, np.int64).reshape(self.num_envs)

    def step_wait(self):
        obs, rewards, terms, truncs, info = self.venv.step(self._actions)
        dones = terms | truncs
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(info["life_lost"]):
            infos[i]["life_lost"] = True
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncs[i] and not terms[i])
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        self._all(indices, f"set_attr({attr_name!r})")
        setattr(self.venv, attr_name, value)

    def _all(self, indices, what: str) -> None:
        """The envs share one batched world: refuse a call meant for some of them."""
        if sorted(self._get_indices(indices)) != list(range(self.num_envs)):
            raise ValueError(
                f"{what} acts on all {self.num_envs} batched worlds at once, "
                f"not on indices {indices!r}"
            )

    def env_method(
        self, method_name: str, *method_args, indices=None, **method_kwargs
    ) -> list[Any]:
        """Calls the method once on the batched worlds (the envs share it), so only for all
        envs at once: a call for some of them (e.g. a reset of one) is refused."""
        self._all(indices, f"env_method({method_name!r})")
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self):
        return list(self.venv.world.observation().cpu().numpy())
