"""The install check names a broken torchvision and the fix."""

import subprocess
import sys

from common.env_check import check_environment
from tests.launch import REPO


def test_clean_environment_passes():
    assert check_environment() == []


def test_broken_torchvision_is_reported(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    proc = subprocess.run([sys.executable, "-m", "common.env_check"], capture_output=True, text=True,
                          env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 1
    assert "torchvision is installed but does not import" in proc.stderr
    assert "pip uninstall -y torchvision" in proc.stderr
