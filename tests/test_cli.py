"""The `worldsim` command as a user meets it: help, configs, clear one-line errors."""

import subprocess
import sys

import pytest

from worldsim.cli import main
from worldsim.config import ConfigError, load_config
from worldsim.data.collect import CollectConfig


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "worldsim", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_help_works_outside_the_repo(tmp_path):
    r = run("--help", cwd=tmp_path)
    assert r.returncode == 0 and "collect" in r.stdout and "train" in r.stdout
    r = run("collect", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "policy.name" in r.stdout and "env.frame_size" in r.stdout
    r = run(
        "collect", "env=maze", "out=d", "steps=30", "workers=1", cwd=tmp_path
    )  # composes the configs
    assert r.returncode == 0, r.stderr
    assert "worldsim/Maze-v0" in r.stdout and (tmp_path / "d" / "manifest.json").exists()


def test_unknown_game_lists_valid_ones(capsys):
    assert main(["collect", "env=pong"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'pong'" in err and "bricks" in err and "maze" in err
    assert "search path" not in err.lower()  # hydra's search path is not a valid choice


def test_help_shows_the_defaults_a_run_gets(capsys):
    # distill.yaml and pipeline.yaml override their dataclasses' defaults: --help says so
    assert main(["distill", "--help"]) == 0
    out = capsys.readouterr().out
    assert "configs/distill.yaml" in out and "out ('runs/bricks-student')" in out
    assert "optim.lr (5e-05)" in out and "optim.lr (0.0003)" not in out
    assert main(["pipeline", "--help"]) == 0
    assert "name ('quick')" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["stepz=10", "policy.nme=random", "+extra=1"])
def test_unknown_keys_are_rejected(capsys, override):
    assert main(["collect", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown config key" in err and "valid keys" in err


def test_wrong_types_and_values_are_rejected():
    with pytest.raises(ConfigError, match="steps must be int"):
        load_config("collect", CollectConfig, ["steps=lots"])
    with pytest.raises(ConfigError, match=r"test_fraction must be a number, got 'some'"):
        load_config("collect", CollectConfig, ["test_fraction=some"])
    with pytest.raises(ConfigError, match="policy.name must be one of"):
        load_config("collect", CollectConfig, ["policy.name=clever"])
    with pytest.raises(ConfigError, match="workers must be >= 1, got 0"):
        load_config("collect", CollectConfig, ["workers=0"])


def test_unknown_command(capsys):
    assert main(["colect"]) == 2
    assert "unknown command 'colect'" in capsys.readouterr().err


def test_data_info_and_video(bricks_data, tmp_path, capsys):
    assert main(["data", "info", str(bricks_data.root)]) == 0
    assert "train" in capsys.readouterr().out
    out = tmp_path / "ep.mp4"
    assert main(["data", "video", str(bricks_data.root), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[4:8] == b"ftyp" and b"avc1" in data  # an H.264 mp4
    assert main(["data", "video", str(bricks_data.root), "--out", str(out)]) == 2  # no overwrite
    assert "exists" in capsys.readouterr().err


def test_data_info_on_a_missing_folder(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nope")]) == 2
    assert "not a worldsim dataset" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command_verbatim():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    block = (
        readme.split("## Quickstart")[1].split("```bash\n")[1].split("```")[0].strip().splitlines()
    )
    assert len(block) == 3  # a virtual environment, install and play, install and test
    assert "pytest" in block[2] and block[2] in (root / ".ci" / "run").read_text().splitlines()
