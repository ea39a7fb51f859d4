"""What an installed rlaccel has: the wheel built from this checkout (``uv build``, as ``pip
install rlaccel`` would get it) carries the packages the repository maps into ``rlaccel``
(``agents/``, ``envs/``) and the shipped configs (``configs/*.yaml``), which ``rlaccel train
--config NAME.yaml`` finds without a checkout (``rlaccel.config.load_data``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rlaccel import config as config_lib
from rlaccel.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_mapped_packages_and_the_configs(tmp_path):
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make test installs it into .venv)")
    # the sdist, then the wheel from it, as a release is built: nothing read from the checkout's
    # own build/ (which setuptools fills when building from the tree, and reads back stale)
    subprocess.run([uv, "build", "-q", "-o", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("rlaccel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"rlaccel/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")} <= names
    assert {"rlaccel/agents/ppo/train.py", "rlaccel/agents/dqn/train.py", "rlaccel/envs/brax.py", "rlaccel/cli/train.py"} <= names


def test_a_config_named_like_a_shipped_one_is_found_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    repo_file = config_lib.load_data(REPO / "configs" / "ppo_cartpole.yaml")
    assert config_lib.load_data("ppo_cartpole.yaml") == config_lib.load_data("configs/ppo_cartpole.yaml") == repo_file
    with pytest.raises(ConfigError, match=r"^ppo_cartpol\.yaml: cannot read config \(No such file or directory\); shipped configs: .*ppo_cartpole\.yaml"):
        config_lib.load_data("ppo_cartpol.yaml")
    with pytest.raises(ConfigError) as missing:
        config_lib.load_data("elsewhere/ppo_cartpole.yaml")  # another folder: only that path
    assert "shipped" not in str(missing.value)
    (tmp_path / "ppo_cartpole.yaml").write_text("env: Pendulum-v1\nalgo: ppo\n")  # a file of the name wins
    assert config_lib.load_data("ppo_cartpole.yaml")["env"] == "Pendulum-v1"
