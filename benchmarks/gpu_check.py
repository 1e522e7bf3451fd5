"""One-command GPU check for a short run on an NVIDIA H200 (about 1-2 minutes).

    python3 -m benchmarks.gpu_check                  # on the GPU machine, from the repository root
    python -m benchmarks.gpu_check --cpu-smoke       # tiny sizes on the CPU: checks the script runs

What it checks, in order, and writes to $OUT/gpu_check.json when OUT is set:
  1. the device: CUDA, name, capability, torch version, whether flash-attn imports
  2. the bf16 matmul rate (torch.mm of large square matrices): the practical ceiling
  3. attention: flash-attn vs SDPA vs an fp32 reference (SDPA only when flash-attn is absent)
  4. our Transformer (MDM and ARM) in bf16 autocast: finite loss and gradients, loss close to fp32
  5. steps/s of a Lightning-free loop (AdamW, bf16 autocast as Lightning's bf16-mixed) for a few
     paper sizes at context 2048, the batch halved until it fits; MFU against the H200's dense bf16
     peak (989 TFLOP/s) and against the measured matmul rate, FLOPs by model.flops

Only model/ and torch are imported (the GPU image has its own torch; no Lightning or MLflow).
Not imported by the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

import model.transformer as transformer
from model.config import FAMILIES, config_for
from model.flops import budget_flops, training_matmul_flops
from model.objectives import training_loss

H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s, vendor datasheet (SXM)


def timer(device: torch.device, fn, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn`, each call timed alone (CUDA events on a GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).norm() / ref.double().norm()).item()


def check_device(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "flash_attn": transformer.flash_attn_func is not None}
    if device.type == "cuda":
        info |= {"name": torch.cuda.get_device_name(device), "capability": list(torch.cuda.get_device_capability(device)),
                 "memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30,
                 "cuda": torch.version.cuda}
    return info


def matmul_rate(device: torch.device, n: int) -> float:
    """bf16 FLOP/s of an n x n x n product on random data (median of 10 after 3 warm-ups)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device).bfloat16()
    b = torch.randn(n, n, generator=gen, device=device).bfloat16()
    return 2 * n**3 / median(timer(device, lambda: a @ b, 3, 10))


def check_attention(device: torch.device, batch: int, heads: int, length: int, head_dim: int) -> dict:
    """Relative errors against fp32 SDPA, causal and not, for SDPA in bf16 and flash-attn if present."""
    gen = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn(batch, heads, length, head_dim, generator=gen, device=device) for _ in range(3))
    out = {}
    for causal in (False, True):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        bf = [t.bfloat16() for t in (q, k, v)]
        out[f"sdpa_bf16_causal={causal}"] = rel_err(F.scaled_dot_product_attention(*bf, is_causal=causal), ref)
        if transformer.flash_attn_func is not None and device.type == "cuda":
            flash = transformer.flash_attn_func(*(t.transpose(1, 2) for t in bf), causal=causal).transpose(1, 2)
            out[f"flash_bf16_causal={causal}"] = rel_err(flash, ref)
            out[f"flash_vs_sdpa_bf16_causal={causal}"] = rel_err(flash, F.scaled_dot_product_attention(*bf, is_causal=causal))
    out["backend"] = "flash-attn and SDPA" if transformer.flash_attn_func is not None else "SDPA only (flash_attn not importable)"
    return out


def check_model(device: torch.device, size: str, vocab: int, length: int, batch: int) -> dict:
    """bf16-autocast loss and gradients of both families vs fp32 on the same weights and batch."""
    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        with torch.device(device):
            model = transformer.Transformer(config_for(size, family, vocab, length))
        window = torch.randint(0, vocab, (batch, length + 1), device=device)

        def loss_of(bf16: bool, model=model, window=window) -> torch.Tensor:
            gen = torch.Generator(device="cpu").manual_seed(3)  # objectives draw noise on the CPU
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return training_loss(model, window, gen)

        fp32 = loss_of(False).item()
        model.zero_grad()
        loss = loss_of(True)
        loss.backward()
        grads_finite = all(p.grad is not None and torch.isfinite(p.grad).all().item() for p in model.parameters())
        out[family] = {"loss_fp32": fp32, "loss_bf16": loss.item(), "rel_diff": abs(loss.item() - fp32) / fp32,
                       "grads_finite": grads_finite, "ok": grads_finite and abs(loss.item() - fp32) / fp32 < 2e-2}
        if transformer.flash_attn_func is not None and device.type == "cuda":
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                flash_logits = model(window[:, :-1]).float()
                saved, transformer.flash_attn_func = transformer.flash_attn_func, None
                try:
                    sdpa_logits = model(window[:, :-1]).float()
                finally:
                    transformer.flash_attn_func = saved
            out[family]["logits_flash_vs_sdpa"] = rel_err(flash_logits, sdpa_logits)
        del model
    return out


def train_throughput(device: torch.device, size: str, family: str, vocab: int, length: int, batch: int,
                     steps: int, mm_rate: float, compile_model: bool) -> dict:
    """Plain loop: zero_grad, bf16-autocast loss, backward, fused AdamW. Halves the batch on OOM."""
    while batch >= 1:
        try:
            return _throughput_at(device, size, family, vocab, length, batch, steps, mm_rate, compile_model)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    return {"size": size, "family": family, "error": "out of memory at batch 1"}


def _throughput_at(device, size, family, vocab, length, batch, steps, mm_rate, compile_model) -> dict:
    cfg = config_for(size, family, vocab, length)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformer.Transformer(cfg)
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    window = torch.randint(0, vocab, (batch, length + 1), device=device)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(optimizer=optimizer, step_model=step_model) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = training_loss(step_model, window, gen)
        loss.backward()
        optimizer.step()

    times = timer(device, step, warmup=3, repeats=steps)
    t = median(times)
    flops = training_matmul_flops(cfg, batch, length)
    result = {"size": size, "family": family, "batch": batch, "seq_len": length, "n_params": cfg.n_params,
              "step_ms": t * 1e3, "tokens_per_s": batch * length / t, "tflops": flops / t / 1e12,
              "mfu_peak": flops / t / H200_BF16_PEAK, "mfu_measured_mm": flops / t / mm_rate,
              "mfu_6n_peak": budget_flops(cfg.n_params, batch * length) / t / H200_BF16_PEAK,
              "compiled": compile_model}
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, step_model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (checks the script only)")
    parser.add_argument("--sizes", nargs="+", default=None, help="MODEL_SIZES names (default 113M 170M 472M)")
    parser.add_argument("--batch", type=int, default=16, help="starting batch (halved until it fits)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per size and family")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (adds ~1 min per model)")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu-smoke to check the script on a CPU")
    device = torch.device("cpu" if smoke else "cuda")
    sizes = args.sizes or (["16k", "74k"] if smoke else ["113M", "170M", "472M"])
    vocab, length, batch = (512, 128, 2) if smoke else (32000, 2048, args.batch)

    started = time.perf_counter()
    report: dict = {"device": check_device(device), "cpu_smoke": smoke}
    print(json.dumps(report["device"]))
    report["bf16_mm_flops"] = mm_rate = matmul_rate(device, 256 if smoke else 8192)
    print(f"bf16 matmul: {mm_rate / 1e12:.1f} TFLOP/s ({mm_rate / H200_BF16_PEAK:.2f} of the 989 peak)")
    report["attention"] = check_attention(device, 2, 4 if smoke else 12, 64 if smoke else 2048, 64)
    print("attention:", json.dumps(report["attention"]))
    report["model_bf16"] = check_model(device, sizes[0], vocab, length, 2)
    print("model bf16:", json.dumps(report["model_bf16"]))
    report["throughput"] = []
    for size in sizes:
        for family in FAMILIES:
            r = train_throughput(device, size, family, vocab, length, batch, 2 if smoke else args.steps,
                                 mm_rate, args.compile)
            report["throughput"].append(r)
            print(json.dumps(r))
    report["seconds"] = time.perf_counter() - started
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as handle:
            json.dump(report, handle, indent=2)
    print_summary(report)


def print_summary(report: dict) -> None:
    ok = all(r["ok"] for r in report["model_bf16"].values())
    print(f"\n== summary ({report['seconds']:.0f} s): {report['device'].get('name', report['device']['device'])}, "
          f"torch {report['device']['torch']}, {report['attention']['backend']}, bf16 model check "
          f"{'ok' if ok else 'FAILED'}, bf16 mm {report['bf16_mm_flops'] / 1e12:.0f} TFLOP/s")
    print(f"{'size':>6} {'family':>6} {'batch':>5} {'ms/step':>8} {'tokens/s':>10} {'TFLOP/s':>8} "
          f"{'MFU(989)':>8} {'MFU(mm)':>8} {'GiB':>6}")
    for r in report["throughput"]:
        if "error" in r:
            print(f"{r['size']:>6} {r['family']:>6} {r['error']}")
            continue
        print(f"{r['size']:>6} {r['family']:>6} {r['batch']:5d} {r['step_ms']:8.1f} {r['tokens_per_s']:10.0f} "
              f"{r['tflops']:8.1f} {r['mfu_peak']:8.3f} {r['mfu_measured_mm']:8.3f} {r.get('peak_mem_gib', 0):6.1f}")


if __name__ == "__main__":
    main()
