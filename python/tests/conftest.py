"""Shared helpers: the repository's fixtures and the CLI binary the bindings are compared with."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
BIN = Path(os.environ.get("FTRI_BIN", ROOT / "target" / "release" / "ftri"))
# Fixtures with a checkpoint and transformers' activations (scripts/make_fixtures.py).
MODEL_FIXTURES = sorted(
    p.name
    for p in FIXTURES.iterdir()
    if (p / "config.json").is_file() and (p / "expected.safetensors").is_file()
)


def cli(*args, check=True):
    """Run the ftri binary; returns the CompletedProcess."""
    if not BIN.is_file():
        pytest.skip(f"{BIN} not built (cargo build --release)")
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"ftri {' '.join(map(str, args))} failed: {r.stderr}")
    return r


def cli_json(*args):
    return json.loads(cli(*args, "--json").stdout)


def cli_error(*args):
    """The one-line message of a CLI user error (exit 2)."""
    r = cli(*args, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line[len("error: ") :]


@pytest.fixture(scope="session")
def llama():
    import ftri

    return ftri.Model.load(FIXTURES / "llama")
