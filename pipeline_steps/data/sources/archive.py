"""Read files out of .deb and .tgz packages in pure Python, into memory.

A .deb is an `ar` archive whose `data.tar.*` member holds the installed tree; an npm package is
a gzipped tar. The sources we read are a few MB each, so their files are returned as bytes and
nothing is unpacked onto disk (no stale half-extracted folders to reason about).
"""
from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member of an `ar` archive (the common / GNU format of .deb)."""
    if not data.startswith(AR_MAGIC):
        raise ValueError("not an ar archive (bad magic)")
    pos = len(AR_MAGIC)
    while pos + _AR_HEADER <= len(data):
        header = data[pos:pos + _AR_HEADER]
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar header at byte {pos}")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = pos + _AR_HEADER
        yield name, data[start:start + size]
        pos = start + size + (size % 2)  # members are padded to an even offset


def _tar_files(tar_bytes: bytes, prefix: str, desc: str) -> dict[str, bytes]:
    """Regular files under `prefix` in a (compressed) tar, keyed by path relative to it."""
    files: dict[str, bytes] = {}
    # "r:*" detects gzip / bzip2 / xz by magic (Debian 12 packages use xz).
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:*") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and _relative(m.name, prefix) is not None]
        with tqdm(total=sum(m.size for m in members), desc=desc, unit="B",
                  unit_scale=True, leave=False) as bar:
            for member in members:
                handle = tar.extractfile(member)
                assert handle is not None  # regular files always have contents
                files[_relative(member.name, prefix)] = handle.read()
                bar.update(member.size)
    return files


def _relative(name: str, prefix: str) -> str | None:
    name = name.removeprefix("./")
    if not name.startswith(prefix) or name == prefix:
        return None
    return name[len(prefix):]


def deb_files(path: str | Path, prefix: str) -> dict[str, bytes]:
    """Files under `prefix` (e.g. `usr/share/wordnet/`) of a .deb's data tarball."""
    path = Path(path)
    for name, member in ar_members(path.read_bytes()):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise ValueError(f"{path}: {name} is zstd-compressed, which tarfile cannot read")
            return _tar_files(member, prefix, desc=f"extract {path.name}")
    raise ValueError(f"{path}: no data.tar.* member (is it a .deb?)")


def tgz_files(path: str | Path, prefix: str) -> dict[str, bytes]:
    """Files under `prefix` (npm tarballs put everything under `package/`) of a .tgz."""
    path = Path(path)
    return _tar_files(path.read_bytes(), prefix, desc=f"extract {path.name}")


def package_files(path: str | Path, prefix: str) -> dict[str, bytes]:
    """Files under `prefix` of a .deb or .tgz, chosen by the file name."""
    if str(path).endswith(".deb"):
        return deb_files(path, prefix)
    if str(path).endswith((".tgz", ".tar.gz")):
        return tgz_files(path, prefix)
    raise ValueError(f"{path}: not a .deb or .tgz package")
