"""What a corpus document is, and the shape its text takes on the way out.

Every source yields `Document`s whose text is short lines (a verse, a paragraph, a sentence,
a gloss) joined by newlines: SentencePiece silently skips input lines longer than 4192 bytes,
so no line may come near that, and whitespace is normalised once, here, for all sources.
"""
from __future__ import annotations

import re
import textwrap
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

MAX_LINE_CHARS = 1000
"""Longest line kept whole: 1000 characters stay under 4192 bytes even at 4 bytes a character."""

_SPACE = re.compile(r"\s+")
# A sentence (or clause) ends at . ! ? ; possibly followed by a closing quote or bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[.!?;][\"'\u2019\u201d)\]])\s+")


@dataclass(frozen=True)
class Document:
    """One unit of the corpus: what the train/val split assigns as a whole."""

    id: str
    """Unique across the corpus, e.g. `kjv/Gen.1`, `austen/emma/07`."""
    source: str
    """Short source name (`kjv`, `austen`, ...) or the dataset / file it came from."""
    year: int | None
    """Year the text was written or published; None when unknown."""
    text: str
    """Normalised text, one short line per verse / paragraph / sentence / gloss."""
    split_key: str = ""
    """Documents sharing a key land in the same split (parallel Bible chapters); default: id."""

    @property
    def key(self) -> str:
        return self.split_key or self.id

    def record(self) -> dict:
        """The JSON line written to train.jsonl / val.jsonl."""
        return {"id": self.id, "source": self.source, "year": self.year, "text": self.text}


def normalise_line(line: str) -> str:
    """NFC, every run of whitespace (tabs, no-break spaces, newlines) to one space, stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", line)).strip()


def split_long_line(line: str, limit: int = MAX_LINE_CHARS) -> list[str]:
    """Pack whole sentences into lines of at most `limit` characters.

    Only long paragraphs are split (Emma has one of 14.7k characters); a single sentence
    longer than the limit is wrapped at spaces.
    """
    if len(line) <= limit:
        return [line]
    lines: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(line):
        pieces = [sentence] if len(sentence) <= limit else textwrap.wrap(
            sentence, limit, break_long_words=True, break_on_hyphens=False
        )
        for piece in pieces:
            if current and len(current) + 1 + len(piece) > limit:
                lines.append(current)
                current = piece
            else:
                current = f"{current} {piece}" if current else piece
    if current:
        lines.append(current)
    return lines


def clean_text(lines: Iterable[str], limit: int = MAX_LINE_CHARS) -> str:
    """Normalise each line, drop empty ones, split long ones: the text of a `Document`."""
    out: list[str] = []
    for line in lines:
        line = normalise_line(line)
        if line:
            out.extend(split_long_line(line, limit))
    return "\n".join(out)
