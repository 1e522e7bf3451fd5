"""Pinned packages from ordinary package registries (Debian, npm, PyPI), fetched once and checked.

A package is downloaded with the registry's own client (`apt-get download`, `npm pack`,
`pip download --no-deps`) into the download cache, checked against its pinned sha256, and only
then moved into place; a cached file is checked again on every use, so a changed or truncated
file is never read. The one home of "download a pinned package and check its sha256".
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import sha256_file

MANAGERS = ("apt", "npm", "pip")


class ChecksumError(InputError):
    """A downloaded or cached file does not have its pinned sha256."""


class FetchError(InputError):
    """The registry client could not download a pinned package."""


@dataclass(frozen=True)
class Package:
    """One pinned package file."""

    name: str
    """Package name in its registry."""
    version: str
    """Exact version (Debian versions keep their epoch, e.g. `1:3.0-37`)."""
    manager: str
    """`apt`, `npm` or `pip`: which client downloads it."""
    sha256: str
    """Hex digest of the downloaded file."""
    filename: str = ""
    """Name the client gives the file (apt writes an epoch colon as `%3a`); empty for a wheel
    whose name is not known in advance (found in the cache by name and version)."""

    def __post_init__(self) -> None:
        if self.manager not in MANAGERS:
            raise ValueError(f"{self.name}: manager must be one of {MANAGERS}, got {self.manager!r}")
        if self.manager != "pip" and not self.filename:
            raise ValueError(f"{self.name}: filename is required for {self.manager} packages")

    @property
    def requirement(self) -> str:
        """What the client is asked for."""
        return {"apt": f"{self.name}={self.version}", "npm": f"{self.name}@{self.version}",
                "pip": f"{self.name}=={self.version}"}[self.manager]

    def cached(self, download_dir: Path) -> Path:
        """Where the file lives (or would live) in the cache."""
        if self.filename:
            return download_dir / self.filename
        found = sorted(download_dir.glob(f"{self.name.replace('-', '_')}-{self.version}-*.whl"))
        return found[0] if found else download_dir / f"{self.name}-{self.version}.whl"

    def describe(self) -> dict[str, str]:
        return {"package": self.name, "version": self.version, "manager": self.manager,
                "file": self.filename, "sha256": self.sha256}


def verify(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: sha256 mismatch: expected {expected}, actual {actual} "
            "(delete the file to download it again, or fix the pin)"
        )


def _client_command(package: Package) -> list[str]:
    if package.manager == "apt":
        # As root, apt would otherwise warn that its sandbox user cannot write here.
        return ["apt-get", "-o", "APT::Sandbox::User=root", "download", package.requirement]
    if package.manager == "npm":
        return ["npm", "pack", "--silent", package.requirement]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", ".", package.requirement]


def _download(package: Package, folder: Path) -> Path:
    """Run the registry client in an empty `folder`; return the one file it wrote."""
    command = _client_command(package)
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0 and package.manager == "apt":
        # A fresh container has no package lists: fetch them once and try again.
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    files = [p for p in folder.iterdir() if p.is_file()]
    if result.returncode != 0 or len(files) != 1:
        raise FetchError(
            f"`{' '.join(command)}` failed (exit {result.returncode}, files {files}):\n"
            f"{result.stderr.strip()[-2000:]}"
        )
    return files[0]


def fetch(package: Package, download_dir: str | Path) -> Path:
    """The verified package file in `download_dir`, downloading it first if absent."""
    download_dir = Path(download_dir)
    target = package.cached(download_dir)
    if not target.exists():
        download_dir.mkdir(parents=True, exist_ok=True)
        # A private temporary folder: a killed download leaves no half file under the real name.
        with tempfile.TemporaryDirectory(dir=download_dir, prefix=".fetch-") as tmp:
            downloaded = _download(package, Path(tmp))
            verify(downloaded, package.sha256)
            target = download_dir / (package.filename or downloaded.name)
            os.replace(downloaded, target)
    verify(target, package.sha256)
    return target
