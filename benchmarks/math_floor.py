"""Why the math study sits at the floor (benchmarks/RESULTS.md section 12): the math-fine-tuned
models on train vs test problems, how often their first equation copies the question's first
number, how many `<<a op b=c>>` they write and how many of those are arithmetically right.

    python -m benchmarks.math_floor --tasks data/tasks --mdm models/finetune/math_mdm \
        --arm models/finetune/math_arm --n 100
"""
from __future__ import annotations

import argparse
import operator
import re
from pathlib import Path

import torch

from pipeline_steps.data.task_sources.items import read_items
from pipeline_steps.data.task_sources.math_problems import parse_line
from pipeline_steps.gsm8k import Gsm8kConfig, solve
from pipeline_steps.scoring.evaluator import load_model

EQUATION = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def problem_sets(tasks: Path, n: int) -> dict[str, list[dict]]:
    lines = (tasks / "math" / "train.txt").read_text(encoding="utf-8").splitlines()[:n]
    train = [parse_line(line, f"train.txt:{k}") for k, line in enumerate(lines, 1)]
    return {"train": [{"id": f"train/{k}", "question": q, "answer": a} for k, (q, _, a) in enumerate(train)],
            "test": read_items(tasks / "math" / "test.jsonl")[:n]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=Path, default=Path("data/tasks"))
    ap.add_argument("--mdm", type=Path, default=Path("models/finetune/math_mdm"))
    ap.add_argument("--arm", type=Path, default=Path("models/finetune/math_arm"))
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    setting = {"sampler": "confidence", "steps_per_token": 1.0, "cfg_scale": 0.0}
    for family, folder in (("mdm", args.mdm), ("arm", args.arm)):
        lm = load_model(folder)
        for name, items in problem_sets(args.tasks, args.n).items():
            rows, _ = solve(lm, items, Gsm8kConfig(), setting)
            copied = written = right = 0
            for item, row in zip(items, rows):
                found = EQUATION.findall(row["text"] or "")
                copied += bool(found) and found[0][0] == re.findall(r"\d+", item["question"])[0]
                written += len(found)
                right += sum(OPS[op](int(a), int(b)) == int(c) for a, op, b, c in found if op != "/" or int(b))
            print(f"{family} {name}: correct {sum(r['correct'] for r in rows)}/{len(items)}, "
                  f"answered {sum(r['answer'] is not None for r in rows)}, first number copied {copied}/{len(items)}, "
                  f"well-formed equations {written}, arithmetic right {right}")


if __name__ == "__main__":
    main()
