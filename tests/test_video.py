"""`write_mp4`: what comes back from the file is the frames, upscaled by nearest neighbour."""

import imageio.v2 as imageio
import numpy as np
import pytest

from worldsim.data.video import upscale, write_mp4


@pytest.mark.parametrize("threads", [None, 1])
def test_mp4_holds_the_frames_upscaled(tmp_path, threads):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 8, 10, 3), dtype=np.uint8)
    path = write_mp4(tmp_path / "a.mp4", frames, fps=10, scale=4, threads=threads)
    back = np.stack(imageio.mimread(path)).astype(int)
    assert back.shape == (6, 32, 40, 3)
    # lossy H.264 on noise: close to the blocks, far from anything else (e.g. unscaled)
    assert np.abs(back - upscale(frames, 4)).mean() < 8
    assert np.abs(back - upscale(frames[::-1], 4)).mean() > 40


def test_bad_scale_and_existing_file_are_refused(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="scale must be an integer >= 1, got 0"):
        write_mp4(tmp_path / "a.mp4", frames, scale=0)
    assert not (tmp_path / "a.mp4").exists()
    write_mp4(tmp_path / "a.mp4", frames, scale=1)
    with pytest.raises(FileExistsError):
        write_mp4(tmp_path / "a.mp4", frames, scale=1)


def test_the_readme_animation_script_draws_real_and_dream_side_by_side(
    tiny_world, tmp_path, monkeypatch
):
    """docs/make_showcase.py makes the README's GIFs: it must keep up with the world API."""
    import runpy
    import sys
    from pathlib import Path

    from PIL import Image

    script = Path(__file__).parents[1] / "docs" / "make_showcase.py"
    out = tmp_path / "show.gif"
    argv = ["make_showcase.py", "--world", str(tiny_world), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", "1", "--steps", "3", "--scale", "1"])
    runpy.run_path(str(script), run_name="__main__")
    gif = Image.open(out)
    assert gif.n_frames == 3 and gif.size == (2 * 32 + 2, 32)  # real | grey bar | dream
