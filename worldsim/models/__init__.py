"""Networks of the world model: the EDM denoiser, its samplers, and the reward/end model."""
