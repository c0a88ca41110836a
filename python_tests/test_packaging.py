"""A source distribution carries everything the extension's build reads."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sdist_carries_every_build_input(tmp_path):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to list the tracked sources")
    tracked = subprocess.run(["git", "ls-files", "csrc", "CMakeLists.txt", "setup.py", "pyproject.toml"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # Build from a copy of the tracked files, so no build output of the checkout can leak in.
    src = tmp_path / "src"
    for name in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                   capture_output=True, text=True, check=True)
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = sorted(set(tracked) - names)
    assert not missing, f"the sdist lacks {missing} (MANIFEST.in)"
