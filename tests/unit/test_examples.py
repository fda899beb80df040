"""The examples the README shows must keep running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_two_rootless_tunnels_echo_over_tcp() -> None:
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / "two_tunnels.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "echo: hello through the tunnel" in res.stdout
    assert res.stdout.startswith("ping 10.70.0.2: ")


def test_a_tunnel_opened_from_a_config_file() -> None:
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / "tunnel_from_file.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ping 10.80.0.1: ")
    assert "hello from a config file" in res.stdout
    assert res.stderr == ""
