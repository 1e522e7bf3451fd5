"""Monte Carlo likelihood cost: forward passes to reach the precision of 1024 stratified samples.

For each request (every choice of the first items of a task), the reference is the authors'
scheme: 1024 samples of t stratified in blocks of 32 (eps = 0). Its standard error is then the
target for the l-uniform estimator stopped at the first block boundary where its own standard
error reaches the target. (The same rule on the eps = 0 estimator is refused by
model.likelihood.check_early_stopping: its 1/t weight makes stopping on its own standard error
biased; RESULTS.md section 6 measured it before the refusal.) Also shown: i.i.d. t (blocks of
1), to see what stratification buys. Ratios are reference passes / passes.

    python -m benchmarks.mc_estimators --model models/pretrain/mdm_base/410k \
        --items data/tasks/in_domain_continuation/test.jsonl --n-items 10
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from model.likelihood import MonteCarloConfig, mdm_elbo_log_likelihood, mdm_l_uniform_log_likelihood
from pipeline_steps.scoring.evaluator import item_requests, load_model


def measure(estimator, model, request, mc: MonteCarloConfig) -> tuple[float, float, int, float]:
    start = time.perf_counter()
    (estimate,) = estimator(model, [request], mc)
    return estimate.logprob, estimate.stderr, estimate.forward_passes, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MDM artifact folder")
    parser.add_argument("--items", required=True, help="task JSONL (multiple choice or target)")
    parser.add_argument("--n-items", type=int, default=10, help="first N items")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    items = [json.loads(line) for line in open(args.items)][: args.n_items]
    requests = [r for item in items for r in item_requests(lm, item)[0]]
    rows: dict[str, list[tuple[float, float, int, float]]] = {}
    for request in requests:
        ref = measure(mdm_elbo_log_likelihood, lm.model, request, MonteCarloConfig(1024, 32))
        target = ref[1]
        configs = {
            "reference: stratified, 1024": ref,
            "i.i.d. t, 1024": measure(mdm_elbo_log_likelihood, lm.model, request, MonteCarloConfig(1024, 1, min_blocks=2)),
            "l-uniform, early stop": measure(mdm_l_uniform_log_likelihood, lm.model, request,
                                                 MonteCarloConfig(1024, 8, target_stderr=target)),
        }
        for name, row in configs.items():
            rows.setdefault(name, []).append(row)
    ref_passes = statistics.mean(r[2] for r in rows["reference: stratified, 1024"])
    print(f"{len(requests)} requests from {len(items)} items of {args.items}; model {args.model}")
    print(f"{'estimator':34s} {'passes/req':>10s} {'ratio':>6s} {'s/req':>7s} {'median stderr':>13s} {'mean |diff| vs ref':>18s}")
    ref_values = [r[0] for r in rows["reference: stratified, 1024"]]
    for name, values in rows.items():
        passes = statistics.mean(v[2] for v in values)
        diff = statistics.mean(abs(v[0] - r) for v, r in zip(values, ref_values))
        print(f"{name:34s} {passes:10.0f} {ref_passes / passes:6.1f} {statistics.mean(v[3] for v in values):7.2f} "
              f"{statistics.median(v[1] for v in values):13.3f} {diff:18.3f}")


if __name__ == "__main__":
    main()
