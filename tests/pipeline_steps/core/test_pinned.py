"""core.pinned: a pinned registry package is downloaded once, checked by sha256, cached."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_steps.core import pinned
from pipeline_steps.core.files import sha256_file


def _fake_package(tmp_path, content: bytes, sha: str | None = None) -> pinned.Package:
    digest = sha or sha256_file(_write(tmp_path / "ref", content))
    return pinned.Package("fake", "1.0", "npm", digest, "fake-1.0.tgz")


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def test_fetch_downloads_verifies_and_caches(tmp_path, monkeypatch):
    package = _fake_package(tmp_path, b"payload")
    calls = []

    def fake_download(pkg, folder):
        calls.append(pkg.name)
        return _write(folder / pkg.filename, b"payload")

    monkeypatch.setattr(pinned, "_download", fake_download)
    cache = tmp_path / "cache"
    path = pinned.fetch(package, cache)
    assert path == cache / "fake-1.0.tgz" and path.read_bytes() == b"payload"
    pinned.fetch(package, cache)  # cached: checked again, not downloaded again
    assert calls == ["fake"]
    assert sorted(p.name for p in cache.iterdir()) == ["fake-1.0.tgz"]


def test_checksum_mismatch_names_file_and_both_hashes(tmp_path, monkeypatch):
    package = _fake_package(tmp_path, b"x", sha="0" * 64)
    monkeypatch.setattr(pinned, "_download",
                        lambda pkg, folder: _write(folder / pkg.filename, b"tampered"))
    cache = tmp_path / "cache"
    with pytest.raises(pinned.ChecksumError) as err:
        pinned.fetch(package, cache)
    actual = sha256_file(_write(tmp_path / "t", b"tampered"))
    assert "fake-1.0.tgz" in str(err.value) and "0" * 64 in str(err.value)
    assert actual in str(err.value)
    assert list(cache.iterdir()) == []  # the bad download never takes the real name
    _write(cache / package.filename, b"tampered")  # a corrupted cached file is refused too
    with pytest.raises(pinned.ChecksumError, match="fake-1.0.tgz"):
        pinned.fetch(package, cache)


def test_fetch_runs_pip_download_and_checks_the_file(tmp_path, monkeypatch):
    body = b"PK fake wheel"
    pin = pinned.Package("fake-pkg", "1.0", "pip", sha256_file(_write(tmp_path / "built.whl", body)))
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        folder = Path(kwargs["cwd"]) / command[command.index("-d") + 1]
        (folder / "fake_pkg-1.0-py3-none-any.whl").write_bytes(body)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(pinned.subprocess, "run", fake_pip)
    path = pinned.fetch(pin, tmp_path / "dl")
    assert path == tmp_path / "dl" / "fake_pkg-1.0-py3-none-any.whl" and path.read_bytes() == body
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert calls[0][-1] == "fake-pkg==1.0"
    pinned.fetch(pin, tmp_path / "dl")
    assert len(calls) == 1  # cached: checked again, not downloaded again
    monkeypatch.setattr(pinned.subprocess, "run",
                        lambda command, **kw: type("Failed", (), {"returncode": 1, "stderr": "no such version"})())
    with pytest.raises(pinned.FetchError, match="pip download"):
        pinned.fetch(pin, tmp_path / "dl2")
    assert [p.name for p in (tmp_path / "dl2").iterdir()] == []  # no half file left
