"""deploy/systemd: the service units verify clean and are hardened.

`systemd-analyze verify` exits 0 on an unknown key and only warns on stderr, so the test
asserts an empty stderr, with ExecStart pointed at this venv's `nexes` (the units name
/opt/nexes/venv). `systemd-analyze security --offline=yes --threshold=50` fails a unit
whose exposure score is above 5.0. Both work without systemd running."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
NEXES = Path(sys.executable).parent / "nexes"
# The template's instances: every queue but ddl, and the ddl queue as the owner.
INSTANCES = ("nexes-api.service", "nexes-scheduler.service", "nexes-worker@main.service", "nexes-worker@ddl.service")


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail("systemd-analyze is missing: apt-get install systemd", pytrace=False)
    return found


def unit_copy(name: str, directory: Path) -> Path:
    """The unit (a template's instance under its instance name), ExecStart on this venv."""
    source = UNITS / (name.split("@", maxsplit=1)[0] + "@.service" if "@" in name else name)
    text = source.read_text().replace("/opt/nexes/venv/bin/nexes", str(NEXES))
    path = directory / name
    path.write_text(text)
    return path


def test_every_unit_the_guide_names_is_there() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == [
        "nexes-api.service",
        "nexes-scheduler.service",
        "nexes-worker@.service",
    ]


@pytest.mark.parametrize("name", INSTANCES)
def test_the_unit_verifies_with_nothing_on_stderr(name: str, tmp_path: Path) -> None:
    done = subprocess.run([analyze(), "verify", str(unit_copy(name, tmp_path))], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize("name", INSTANCES)
def test_the_unit_passes_the_offline_security_threshold(name: str, tmp_path: Path) -> None:
    cmd = [analyze(), "security", "--offline=yes", "--threshold=50", str(unit_copy(name, tmp_path))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Overall exposure level" in done.stdout
