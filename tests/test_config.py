"""Configuration files: parsing, merging, clear errors naming the line, flags override."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocifs import config, units
from ocifs.commands import cli
from ocifs.errors import ConfigError

GOOD = """
[cache]
dir = "/srv/ocifs-cache"
max_size = "50G"

[transfer]
jobs = 12

[registry."reg.example:5000"]
plain_http = true
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_is_read(tmp_path: Path) -> None:
    settings = config.load_settings([write(tmp_path, GOOD)])
    assert settings.cache_dir == "/srv/ocifs-cache"
    assert settings.cache_max_size == 50 << 30
    assert settings.jobs == 12 and settings.retries is None
    assert settings.registry("reg.example:5000").plain_http
    assert settings.registry("other:1") == config.RegistrySettings()


def test_user_file_overrides_system_file_key_by_key(tmp_path: Path) -> None:
    system = write(tmp_path, GOOD, "system.toml")
    user = write(tmp_path, "[transfer]\njobs = 3\n", "user.toml")
    settings = config.load_settings([system, user])
    assert settings.jobs == 3 and settings.cache_dir == "/srv/ocifs-cache"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[cache]\ndir = \n", r"line 2"),
        ('[cache]\nmax_size = "lots"\n', r"line 2: cache.max_size: invalid size 'lots'"),
        ("[cache]\n\n\nbogus = 1\n", r"line 4: unknown setting 'cache.bogus'"),
        ("[transfer]\njobs = 0\n", r"line 2: transfer.jobs must be a whole number"),
        ("[transfer]\njobs = true\n", r"transfer.jobs must be a whole number"),
        ("[transfer]\nread_timeout = 0\n", r"line 2: transfer.read_timeout must be a number of seconds above 0"),
        ('[registry."r:1"]\nplain_http = "yes"\n', r"line 2: registry.\"r:1\".plain_http must be true or false"),
        ('[registry."r:1"]\nmirrors = ["m:1"]\n', r"line 2: unknown setting 'registry.\"r:1\".mirrors'"),
        ("cache = 5\n", r"\[cache\] must be a table"),
    ],
)
def test_bad_file_names_the_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        config.load_settings([path])
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIFS_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        config.load_settings()


def test_flags_override_config_and_config_fills_the_rest(tmp_path: Path) -> None:
    settings = config.load_settings([write(tmp_path, GOOD)])
    parser = cli.build_parser()
    args = parser.parse_args(["pull", "reg.example:5000/m:v1", "--jobs", "2"])
    cli.apply_settings(args, settings)
    assert args.jobs == 2  # the flag wins
    assert args.cache_dir == "/srv/ocifs-cache" and args.cache_max_size == 50 << 30
    assert args.plain_http is True and args.retries == cli.DEFAULT_RETRIES
    assert cli.client_options(args).read_timeout == cli.DEFAULT_READ_TIMEOUT
    quick = parser.parse_args(["pull", "reg.example:5000/m:v1", "--read-timeout", "2.5"])
    cli.apply_settings(quick, settings)
    assert cli.client_options(quick).read_timeout == 2.5
    other = parser.parse_args(["pull", "elsewhere.example/m:v1"])
    cli.apply_settings(other, settings)
    assert other.jobs == 12 and other.plain_http is False


def test_defaults_without_any_file() -> None:
    args = cli.build_parser().parse_args(["push", "localhost:5000/m:v1", "f"])
    cli.apply_settings(args, config.Settings())
    assert isinstance(args, argparse.Namespace)
    assert args.jobs == cli.DEFAULT_JOBS and args.retries == cli.DEFAULT_RETRIES


def test_cli_with_a_bad_config_file_is_one_line_and_nonzero(tmp_path: Path) -> None:
    path = write(tmp_path, "[cache]\nmax_size = -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "ocifs", "inspect", "localhost:1/x:v1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "OCIFS_CONFIG": str(path)},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == f"ocifs: error: {path} line 2: cache.max_size: negative size -3\n"


def test_size_parsing() -> None:
    assert units.parse_size("16M") == 16 << 20
    assert units.parse_size("1.5GiB") == 3 << 29
    assert units.parse_size("4096") == 4096
    assert units.parse_size(7) == 7
    for bad in ("", "M", "1X", "-1", "1..2"):
        with pytest.raises(ValueError):
            units.parse_size(bad)
