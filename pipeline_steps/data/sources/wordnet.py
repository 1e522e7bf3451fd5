"""WordNet 3.0 glosses: a document is a run of consecutive glosses of one lexicographer file.

`data.{noun,verb,adj,adv}` hold one synset per line (after a licence header whose lines start
with two spaces): `offset lex_filenum ss_type w_cnt word lex_id [word lex_id]... p_cnt ...
| gloss`. The first word names the synset; the gloss follows `|` (definition; "examples").
Synsets of one lexicographer file (noun.animal, verb.motion, ...) are contiguous, so chunks
of consecutive glosses stay on one topic.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from pipeline_steps.data.sources.document import Document, clean_text

POS_FILES = ("noun", "verb", "adj", "adv")
GLOSSES_PER_DOCUMENT = 50
"""A chunk this size is a few kB, like a Bible chapter: comparable documents across sources."""

# Adjective markers `(a)`, `(p)`, `(ip)` on a lemma say where the adjective may stand.
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def parse_line(line: str) -> tuple[int, str, str] | None:
    """(lexicographer file number, first lemma, gloss) of one data line; None for the header."""
    if not line.strip() or line.startswith("  "):
        return None
    head, sep, gloss = line.partition("|")
    fields = head.split()
    if not sep or len(fields) < 5:
        raise ValueError(f"wordnet: malformed data line {line[:80]!r}")
    lemma = _ADJ_MARKER.sub("", fields[4]).replace("_", " ")
    return int(fields[1]), lemma, gloss.strip()


def glosses(data: bytes) -> Iterator[tuple[int, str]]:
    """(lexicographer file number, `lemma: gloss` line) for each synset of one data file."""
    for line in data.decode("utf-8", errors="replace").splitlines():
        parsed = parse_line(line)
        if parsed is not None:
            lexfile, lemma, gloss = parsed
            yield lexfile, f"{lemma}: {gloss}"


def documents(files: Mapping[str, bytes],
              group_size: int = GLOSSES_PER_DOCUMENT) -> Iterator[Document]:
    """Chunks of `group_size` consecutive glosses, never spanning two lexicographer files."""
    for pos in POS_FILES:
        if f"data.{pos}" not in files:
            continue
        chunk: list[str] = []
        chunk_lexfile = -1
        counter = 0
        for lexfile, line in [*glosses(files[f"data.{pos}"]), (-1, "")]:  # sentinel flushes
            if chunk and (lexfile != chunk_lexfile or len(chunk) == group_size):
                yield Document(id=f"wordnet/{pos}/{chunk_lexfile:02d}/{counter:04d}",
                               source="wordnet", year=2006, text=clean_text(chunk))
                chunk, counter = [], counter + 1
            chunk_lexfile = lexfile
            chunk.append(line)
