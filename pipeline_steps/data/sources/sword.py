"""SWORD zText Bible modules (World English Bible, King James): one document per chapter.

Format, per testament (`ot`, `nt`):
  {t}.bzs  (offset, size, uncompressed size) little-endian u32 triples: zlib blocks in {t}.bzz
  {t}.bzv  (block, offset, size) as u32, u32, u16: one entry per index slot, in order
  {t}.bzz  the zlib blocks (one per book for BlockType=BOOK)
Index slots follow the module's versification (module and testament headings, then per book a
heading slot, per chapter a heading slot and its verses). Rather than carrying versification
tables, chapters are found from the OSIS markup itself: osis2mod writes the `<chapter sID
osisID="Gen.1"/>` milestone into the chapter's heading slot, so every slot between a chapter's
start and end milestones is one of its verses, and both translations name chapters alike.
"""
from __future__ import annotations

import html
import re
import struct
import zlib
from collections.abc import Iterator, Mapping

from pipeline_steps.data.sources.document import Document, clean_text

# The 66 books both translations share (OSIS names); the WEB module also carries the
# deuterocanon, which the KJV module lacks, so keeping these keeps the two exactly parallel.
CANON = tuple((
    "Gen Exod Lev Num Deut Josh Judg Ruth 1Sam 2Sam 1Kgs 2Kgs 1Chr 2Chr Ezra Neh Esth Job Ps "
    "Prov Eccl Song Isa Jer Lam Ezek Dan Hos Joel Amos Obad Jonah Mic Nah Hab Zeph Hag Zech Mal "
    "Matt Mark Luke John Acts Rom 1Cor 2Cor Gal Eph Phil Col 1Thess 2Thess 1Tim 2Tim Titus Phlm "
    "Heb Jas 1Pet 2Pet 1John 2John 3John Jude Rev"
).split())

# Elements whose contents are not the translated text: footnotes, editorial section headings
# (only `canonical="true"` titles such as psalm superscriptions are kept), speaker labels.
_SKIPPED = {"note", "title", "speaker"}
_TOKEN = re.compile(r"<(/?)([A-Za-z]+)((?:[^>\"']|\"[^\"]*\"|'[^']*')*?)(/?)>|([^<]+)")
_ATTR = re.compile(r"([A-Za-z:]+)=\"([^\"]*)\"")
# Strong's-number word wrappers `<w lemma="strong:H7225">beginning</w>` are most of the tags;
# dropping them up front (keeping the word) halves the parse time.
_WORD_TAG = re.compile(r"</?w(?:\s[^>]*)?>")
# Where a skipped element sat between two words ("God<note>..</note>created"), a space
# stands in for it unless punctuation follows.
_GAP = "\x00"
_GAP_BEFORE_PUNCT = re.compile(_GAP + r"+(?=[\s,.;:!?\u2019\u201d)\]]|$)")


def slots(files: Mapping[str, bytes]) -> Iterator[str]:
    """The raw OSIS text of every index slot, Old Testament first (empty slots as "")."""
    for testament in ("ot", "nt"):
        if f"{testament}.bzv" not in files:
            continue  # modules may hold one testament only
        bzs, bzv, bzz = (files[f"{testament}.{ext}"] for ext in ("bzs", "bzv", "bzz"))
        blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs) - 11, 12)]
        cached: tuple[int, bytes] = (-1, b"")
        for i in range(0, len(bzv) - 9, 10):
            block, offset, size = struct.unpack_from("<IIH", bzv, i)
            if size == 0:
                yield ""
                continue
            if cached[0] != block:  # slots run through one block before the next
                start, length, _ = blocks[block]
                cached = (block, zlib.decompress(bzz[start:start + length]))
            yield cached[1][offset:offset + size].decode("utf-8", errors="replace")


class _ChapterReader:
    """Walks slots in order, stripping markup, collecting each chapter's verses."""

    def __init__(self) -> None:
        self.chapter: str | None = None
        self.verses: list[str] = []
        self.skip_depth = 0
        self.done: list[tuple[str, list[str]]] = []

    def _close(self) -> None:
        if self.chapter is not None:
            self.done.append((self.chapter, self.verses))
        self.chapter, self.verses = None, []

    def _tag(self, closing: str, name: str, attrs: str, empty: str) -> None:
        values = dict(_ATTR.findall(attrs))
        if name == "chapter":
            if closing or "eID" in values:
                self._close()
            elif "osisID" in values:
                self._close()
                self.chapter = values["osisID"]
        elif name == "div" and values.get("type") == "book" and "sID" in values:
            self._close()  # a book heading (titles, prefaces) belongs to no chapter
        elif name in _SKIPPED and not empty:
            if closing:
                self.skip_depth = max(0, self.skip_depth - 1)
            elif self.skip_depth or values.get("canonical") != "true":
                self.skip_depth += 1

    def _flush(self, text: list[str]) -> None:
        verse = _GAP_BEFORE_PUNCT.sub("", html.unescape("".join(text))).replace(_GAP, " ")
        # The KJV's pilcrows are printers' paragraph marks, not words.
        verse = verse.replace("\u00b6", "")
        if self.chapter is not None and verse.strip():
            self.verses.append(verse)
        text.clear()

    def slot(self, osis: str) -> None:
        """Feed one index slot: its text (outside skipped elements) is one verse line."""
        text: list[str] = []
        for closing, name, attrs, empty, chars in _TOKEN.findall(_WORD_TAG.sub("", osis)):
            if name == "chapter" or (name == "div" and 'type="book"' in attrs):
                self._flush(text)  # text before a chapter or book milestone stays on its side
            if name:
                skipping = self.skip_depth > 0
                self._tag(closing, name, attrs, empty)
                if skipping and not self.skip_depth:
                    text.append(_GAP)
            elif self.skip_depth == 0:
                text.append(chars)
        self._flush(text)

    def finish(self) -> list[tuple[str, list[str]]]:
        self._close()
        return self.done


def chapters(files: Mapping[str, bytes]) -> list[tuple[str, list[str]]]:
    """(OSIS chapter id such as `Gen.1`, verse texts) for every chapter of a zText module."""
    reader = _ChapterReader()
    for osis in slots(files):
        reader.slot(osis)
    return reader.finish()


def documents(files: Mapping[str, bytes], source: str, year: int,
              books: tuple[str, ...] = CANON) -> Iterator[Document]:
    """One document per chapter of `books`, a verse per line.

    The split key names the chapter, not the translation, so a chapter's KJV and WEB
    versions always land in the same split.
    """
    wanted = set(books)
    for chapter, verses in chapters(files):
        if chapter.split(".")[0] not in wanted:
            continue
        text = clean_text(verses)
        if text:
            yield Document(id=f"{source}/{chapter}", source=source, year=year, text=text,
                           split_key=f"bible/{chapter}")
