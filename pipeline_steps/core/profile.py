"""`smdm-profile NAME`: write params.yaml from profiles/default.yaml merged with profiles/NAME.yaml.

profiles/default.yaml holds every value; another profile holds only what it changes, merged
key by key (a mapping merges, anything else replaces). A key a profile adds that default.yaml
does not have is an error, so a misspelt override cannot be silently ignored, except under
mappings that are open by design (`pretrain.groups`, `evaluate.task_max_items`, `generate.pairs`, per-size `lr`),
which a profile replaces whole. The written params.yaml records which profile made it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from pipeline_steps.core.files import atomic_write_text
from pipeline_steps.core.params import ParamsError, load_params
from pipeline_steps.core.stage_cli import guarded

PROFILES = Path("profiles")
REPLACED_WHOLE = {"pretrain.groups", "evaluate.task_max_items", "generate.pairs", "finetune.groups",
                  "temporal.later"}


def profile_of(params: Path) -> str:
    """The profile that wrote params.yaml (its header line), or `params.yaml` if hand-written."""
    first = params.read_text().splitlines()[0] if params.exists() else ""
    if first.startswith("# Written by `smdm-profile "):
        return first.split("`smdm-profile ")[1].split("`")[0]
    return "params.yaml"


def merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        if key not in base:
            raise ParamsError(f"{path}: not a key of profiles/default.yaml (misspelt?)")
        if path not in REPLACED_WHOLE and isinstance(value, dict) and isinstance(base[key], dict):
            merged[key] = merge(base[key], value, path)
        else:
            merged[key] = value
    return merged


def render(name: str, folder: Path = PROFILES) -> dict[str, Any]:
    """The full params of profile `name`."""
    if not (folder / "default.yaml").exists():
        raise ParamsError(f"{folder / 'default.yaml'}: missing; run from the project root (profiles/ "
                          "holds default.yaml and the other profiles)")
    default = load_params(folder / "default.yaml")
    if name == "default":
        return default
    path = folder / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ParamsError(f"{path}: no such profile; profiles: {known}")
    return merge(default, load_params(path))


def write_params(name: str, out: Path = Path("params.yaml"), folder: Path = PROFILES) -> None:
    params = render(name, folder)
    header = f"# Written by `smdm-profile {name}` from profiles/: edit the profile, not this file.\n"
    atomic_write_text(out, header + yaml.safe_dump(params, sort_keys=False, width=100))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="profile: debug, default, cpu-study, paper (a file in profiles/)")
    parser.add_argument("--out", default="params.yaml", help="params file to write")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error too")
    args = parser.parse_args(argv)

    def body() -> None:
        write_params(args.name, Path(args.out))
        print(f"params.yaml <- profiles/{args.name}.yaml")

    return guarded("smdm-profile", body, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
