"""Documents from any HF dataset (e.g. SlimPajama) or local text / jsonl / parquet files.

Both go through `datasets.load_dataset(..., streaming=True)`: a hub corpus of hundreds of GB is
read row by row and stopped at the configured cap, and local files take the very same path
(the packaged `json` / `text` / `parquet` builders), so tests exercise it offline.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import sha256_file
from pipeline_steps.data.sources.document import Document, clean_text

# File suffix -> packaged builder. Compressed variants (.jsonl.gz, ...) are read the same way.
BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".text": "text",
            ".parquet": "parquet"}
_COMPRESSION = {".gz", ".bz2", ".xz", ".zst"}


def builder_for(path: str | Path, field: str = "data_files") -> str:
    """The packaged `datasets` builder of a local file; `field` names the setting in an error."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    if not suffixes or suffixes[-1] not in BUILDERS:
        raise InputError(f"{field}: cannot tell the format of {path} "
                         f"(expected one of {sorted(BUILDERS)}, optionally compressed)")
    return BUILDERS[suffixes[-1]]


def _stream(*args: Any, **kwargs: Any) -> Iterable[dict]:
    # Imported here: `datasets` costs seconds to import and the default corpus never needs it.
    import datasets

    return datasets.load_dataset(*args, streaming=True, **kwargs)


def local_rows(path: str | Path, field: str = "data_files", **options: Any) -> Iterator[dict]:
    """Stream the rows of one local file; a file its builder cannot parse is an InputError
    naming `field` and the file (pyarrow's own errors would end in a traceback)."""
    import pyarrow  # installed with `datasets`

    try:
        yield from _stream(builder_for(path, field), data_files=str(path), split="train", **options)
    except (pyarrow.ArrowException, UnicodeDecodeError) as err:
        raise InputError(f"{field}: cannot read {path} as {builder_for(path, field)}: {err}") from None


def rows_to_documents(rows: Iterable[dict], source: str, text_field: str,
                      year: int | None) -> Iterator[Document]:
    """A document per row with non-empty text, numbered in stream order."""
    for index, row in enumerate(rows):
        if text_field not in row:
            raise InputError(f"{source}: row {index + 1} has no field text_field={text_field!r} "
                             f"(fields: {sorted(row)}); set corpus.text_field to the field holding the text")
        text = clean_text(str(row[text_field] or "").splitlines())
        if text:
            yield Document(id=f"{source}/{index:09d}", source=source, year=year, text=text)


def hub_documents(name: str, config: str | None, split: str, text_field: str,
                  year: int | None) -> Iterator[Document]:
    """Stream a dataset from the hub (or the local HF cache when offline)."""
    rows = _stream(name, config, split=split)
    yield from rows_to_documents(rows, source=name, text_field=text_field, year=year)


def file_documents(path: str | Path, text_field: str, year: int | None) -> Iterator[Document]:
    """Stream one local file; plain text files give one document per blank-line paragraph."""
    builder = builder_for(path)
    rows = local_rows(path, **({"sample_by": "paragraph"} if builder == "text" else {}))
    field = "text" if builder == "text" else text_field
    yield from rows_to_documents(rows, source=Path(path).name, text_field=field, year=year)


def local_documents(data_files: tuple[str, ...], text_field: str,
                    year: int | None) -> Iterator[Document]:
    """All files in order, each its own source (named by file name, which must be unique).

    The files are checked now, before the first document is read.
    """
    names = [Path(p).name for p in data_files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"data_files: file names must be unique (they name sources): {duplicates}")
    for path in data_files:
        builder_for(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"data_files: no such file {path}")
    return (doc for path in data_files for doc in file_documents(path, text_field, year))


def hub_provenance(name: str, config: str | None, split: str) -> dict[str, dict[str, str]]:
    return {name: {"dataset": name, "config": config or "", "split": split}}


def local_provenance(data_files: tuple[str, ...]) -> dict[str, dict[str, str]]:
    return {Path(p).name: {"file": str(p), "sha256": sha256_file(p)} for p in data_files}
