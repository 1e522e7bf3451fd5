"""Jane Austen's six novels from the R package janeaustenr: one document per chapter.

The package keeps its data as an R lazy-load database: `Rdata.rdx` is a gzip-compressed
serialized R list whose `variables` maps each object name to (offset, length) in `Rdata.rdb`;
each object there is a 4-byte big-endian uncompressed length (plus a type byte for bzip2 / xz)
and a compressed serialized R object. The PyPI `rdata` package reads the serializations; each
novel is a character vector of the printed lines, hard-wrapped at ~70 columns.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import re
import warnings
import zlib
from collections.abc import Iterator, Mapping

import rdata

from pipeline_steps.data.sources.document import Document, clean_text

# R object name -> year of first publication. Northanger Abbey and Persuasion came out
# together in December 1817 (their title pages say 1818).
BOOKS = {
    "sensesensibility": 1811,
    "prideprejudice": 1813,
    "mansfieldpark": 1814,
    "emma": 1815,
    "northangerabbey": 1817,
    "persuasion": 1817,
}

_CHAPTER = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.IGNORECASE)
# Volume headings (Emma restarts its chapter numbers per volume) and end marks are not prose.
_NOT_PROSE = re.compile(r"^\s*(volume\s+[ivx\d]+|the end|finis)\.?\s*$", re.IGNORECASE)


def _unserialize(data: bytes):
    with warnings.catch_warnings():
        # rdata warns that a bare serialization (no RDS / RData file header) is "assumed RDS".
        warnings.simplefilter("ignore", UserWarning)
        return rdata.conversion.convert(rdata.parser.parse_data(data))


def _decompress(blob: bytes, compression: int) -> bytes:
    """One lazy-load object: R's compression 1 is zlib; 2 and 3 add a type byte."""
    if compression in (0, 1):
        return zlib.decompress(blob[4:])
    kind, body = blob[4:5], blob[5:]
    codecs = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
              b"0": lambda raw: raw}
    if kind not in codecs:
        raise ValueError(f"unknown R lazy-load compression type {kind!r}")
    return codecs[kind](body)


def read_lazyload(rdx: bytes, rdb: bytes) -> dict[str, list[str]]:
    """Every character-vector object of an R lazy-load database, by name."""
    index = _unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else rdx)
    compressed = index.get("compressed", [True])
    compression = int(compressed[0]) if len(compressed) else 1
    objects = {}
    for name, (offset, length) in index["variables"].items():
        value = _unserialize(_decompress(rdb[int(offset):int(offset) + int(length)], compression))
        objects[str(name)] = [str(line) for line in value]
    return objects


def split_chapters(lines: list[str]) -> list[list[str]]:
    """The lines of each chapter (heading excluded); front matter before chapter 1 is dropped."""
    chapters: list[list[str]] = []
    for line in lines:
        if _CHAPTER.match(line):
            chapters.append([])
        elif chapters and not _NOT_PROSE.match(line):
            chapters[-1].append(line)
    return chapters


def paragraphs(lines: list[str]) -> list[str]:
    """Undo the hard wrapping: blank lines separate paragraphs, a paragraph becomes one line."""
    out: list[str] = []
    current: list[str] = []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def documents(files: Mapping[str, bytes]) -> Iterator[Document]:
    """One document per chapter of each novel, a paragraph per line (long ones split)."""
    novels = read_lazyload(files["Rdata.rdx"], files["Rdata.rdb"])
    unknown = sorted(set(novels) - set(BOOKS))
    if unknown:
        raise ValueError(f"janeaustenr: unexpected objects {unknown}; known: {sorted(BOOKS)}")
    for name in [name for name in BOOKS if name in novels]:
        year = BOOKS[name]
        for number, chapter in enumerate(split_chapters(novels[name]), start=1):
            text = clean_text(paragraphs(chapter))
            if text:
                yield Document(id=f"austen/{name}/{number:02d}", source="austen", year=year,
                               text=text)
