"""Atomic writes and content hashes: a killed stage never leaves a half-written output."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline_steps.core.errors import InputError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def unit_hash(salt: str, key: str) -> float:
    """A uniform number in [0, 1) from sha256: stable across runs, machines and Pythons."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written staging folder into place (the old one is removed only after)."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def staging_dir(final: str | Path) -> Path:
    """A fresh sibling folder to write a whole output into before `replace_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def finite_json(value: Any) -> Any:
    """NaN and infinities as null, in nested dicts and lists: strict JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def json_lines(path: str | Path, expected: str = "one JSON object per line") -> Iterator[tuple[int, Any]]:
    """(1-based line number, value) of each non-blank line of a JSONL file; a line that is not
    JSON is an InputError naming the file and line, then `expected`."""
    with open(path, "rb") as handle:  # bytes: json.loads decodes them, so bad UTF-8 names its line too
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip(b"\r\n"))  # (else an error at its end is at column 1 of line 2)
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                reason = f"column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else err
                raise InputError(f"{path}:{number}: not valid JSON ({reason}); expected {expected}") from None
            yield number, value
