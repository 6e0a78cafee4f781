"""The systemd units pass `systemd-analyze verify` (which needs /usr/local/bin/ocifs: `make setup`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ALL_UNITS = sorted(p for p in UNITS.rglob("*") if p.suffix in {".service", ".timer", ".mount", ".automount"})


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd", pytrace=False)
    if not Path("/usr/local/bin/ocifs").exists():
        pytest.fail("/usr/local/bin/ocifs missing: run `make setup` as root (make install-bin)", pytrace=False)
    return subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)], capture_output=True, text=True, timeout=60, check=False
    )


def test_units_exist() -> None:
    names = {p.name for p in ALL_UNITS}
    assert {"ocifs@.service", "ocifs-cache-prune.service", "ocifs-cache-prune.timer"} <= names
    assert {"mnt-models-llama.mount", "mnt-models-llama.automount"} <= names


@pytest.mark.parametrize("unit", ALL_UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path) -> None:
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check has teeth: a missing binary and a Where= that does not match the name fail."""
    broken = tmp_path / "ocifs@.service"
    broken.write_text((UNITS / "ocifs@.service").read_text().replace("/usr/local/bin/ocifs", "/nonexistent/ocifs"))
    assert verify(broken).returncode != 0
    wrong = tmp_path / "mnt-other.mount"
    wrong.write_text((UNITS / "examples" / "mnt-models-llama.mount").read_text())
    assert verify(wrong).returncode != 0


def test_service_is_notify_and_avoids_private_mount_namespaces() -> None:
    text = (UNITS / "ocifs@.service").read_text()
    settings = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
    assert "Type=notify" in text and "After=network-online.target" in text and "Restart=on-failure" in text
    # These would put the FUSE mount in a namespace nobody else sees.
    assert not settings & {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ReadWritePaths"}
