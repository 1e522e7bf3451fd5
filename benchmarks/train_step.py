"""One training step (forward + backward + AdamW) of our models, timed side by side.

Contenders, interleaved repeat by repeat (benchmarks/timing.py):
  ours-arm      model.transformer.Transformer as an ARM, loss model.objectives.training_loss
  hf-arm        transformers' LlamaForCausalLM of the same shape (untied, full MHA, no biases,
                rope base 10000, SDPA, fp32), the same weights, the same loss
  ours-mdm      our MDM, training_loss
  mdm-fullhead  a reference: the same MDM loss with the head and CE at all B x L positions (as
                model/objectives.py did before 2026-11-28; it now runs the head at masked ones)
  mm            torch.mm of two large square fp32 matrices: the machine's matmul ceiling
  mm-shapes     every matmul of one ARM training step, alone (benchmarks.matmul_rate): the
                ceiling at this model's shapes, with no elementwise work between products
and on request ours-arm variants: --compile (torch.compile), --fused-adamw (AdamW fused=True),
--alt-threads N (the same step at N torch threads, switched per call, to compare thread counts).

Printed: ms per step, tokens/s, matmul GFLOP/s (model.flops.training_matmul_flops) and the ratios
ours/HF, MDM/ARM and achieved FLOP/s / mm rate, each the median of per-repeat ratios. FLOPs are
model.flops.training_matmul_flops, which counts the head at all positions: for an MDM whose loss runs
the head at masked positions only (about half), its FLOP/s are nominal, not work done.

    python -m benchmarks.train_step --sizes 410k 1.31M --seq-len 64 --batch 16 --vocab 2048
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from benchmarks.matmul_rate import matmul_call, repeated, shapes_call, training_matmul_shapes
from benchmarks.timing import interleaved, machine_line, median, paired_ratio, spread
from model.config import config_for
from model.flops import training_matmul_flops
from model.objectives import draw_training_noise, training_loss
from model.transformer import Transformer


def hf_llama(ours: Transformer) -> torch.nn.Module:
    """LlamaForCausalLM of our ARM's shape, holding our ARM's weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = ours.cfg
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ffn,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.context, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, use_cache=False)
    hf = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa", dtype=torch.float32)
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    d, f = cfg.d_model, cfg.d_ffn
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(ours.embed.weight)
        hf.lm_head.weight.copy_(ours.head.weight)
        hf.model.norm.weight.copy_(ours.norm.weight)
        for block, layer in zip(ours.blocks, hf.model.layers):
            q, k, v = block.attn.qkv.weight.split(d)  # qkv rows: [q; k; v], heads contiguous
            layer.self_attn.q_proj.weight.copy_(q)
            layer.self_attn.k_proj.weight.copy_(k)
            layer.self_attn.v_proj.weight.copy_(v)
            layer.self_attn.o_proj.weight.copy_(block.attn.proj.weight)
            gate, up = block.mlp.gate_up.weight.split(f)
            layer.mlp.gate_proj.weight.copy_(gate)
            layer.mlp.up_proj.weight.copy_(up)
            layer.mlp.down_proj.weight.copy_(block.mlp.down.weight)
            layer.input_layernorm.weight.copy_(block.norm1.weight)
            layer.post_attention_layernorm.weight.copy_(block.norm2.weight)
    return hf.train()


def hf_loss(hf: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """Next-token CE, computed exactly as model.objectives.arm_loss does."""
    logits = hf(input_ids=window[:, :-1], use_cache=False).logits  # (B, L, V)
    return F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())


def mdm_loss_full_head(model: Transformer, window: torch.Tensor, generator: torch.Generator,
                       eps: float = 1e-3) -> torch.Tensor:
    """The MDM loss with the head and CE at all B x L positions, unmasked ones then zeroed: the
    formula model/objectives.py used before it ran the head at masked positions only."""
    tokens = window[:, :-1]
    length, p, masked = draw_training_noise(tokens.shape[0], tokens.shape[1], generator, eps)
    noisy = torch.where(masked, torch.full_like(tokens, model.cfg.mask_id), tokens)  # (B, L)
    cos, sin = model.rope_cos[:length], model.rope_sin[:length]
    x = model.embed(noisy)  # (B, L, d)
    for block in model.blocks:
        x = block(x, cos, sin)
    logits = model.head(model.norm(x))  # (B, L, V)
    ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none")
    return ((ce.view_as(tokens) * masked / p).sum(dim=1) / tokens.shape[1]).mean()


def step_call(model: torch.nn.Module, loss_fn, window: torch.Tensor, fused: bool = False, threads: int = 0):
    """A closure doing one zero_grad + loss + backward + AdamW step (the training system's optimiser:
    foreach=True; `fused` tries fused=True), at `threads` torch threads if given."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-4, betas=(0.9, 0.95), **({"fused": True} if fused else {"foreach": True}))
    counter = [0]

    def step() -> torch.Tensor:
        if threads:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return plain_step()
            finally:
                torch.set_num_threads(previous)
        return plain_step()

    def plain_step() -> torch.Tensor:
        counter[0] += 1
        generator = torch.Generator().manual_seed(counter[0])
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, window, generator)
        loss.backward()
        optimizer.step()
        return loss

    return step


def clone(model: Transformer) -> Transformer:
    copy = Transformer(model.cfg)
    copy.load_state_dict(model.state_dict())
    return copy


def check_agreement(ours_arm, hf, mdm, window) -> str:
    """Same weights give the same ARM loss in both; the full-head MDM loss equals training_loss."""
    with torch.no_grad():
        arm = training_loss(ours_arm, window, torch.Generator()).item()
        ref = hf_loss(hf, window).item()
        ours = training_loss(mdm, window, torch.Generator().manual_seed(7)).item()
        dense = mdm_loss_full_head(mdm, window, torch.Generator().manual_seed(7)).item()
    if abs(arm - ref) > 1e-4 * abs(ref) or abs(ours - dense) > 1e-4 * abs(ours):
        raise RuntimeError(f"losses disagree: ours-arm {arm} hf {ref}; ours-mdm {ours} mdm-fullhead {dense}")
    return f"loss agreement: ours-arm {arm:.6f} hf-arm {ref:.6f}; ours-mdm {ours:.6f} mdm-fullhead {dense:.6f}"


def build_contenders(size: str, args) -> tuple[dict, dict[str, float], int]:
    """Step closures for every contender, their matmul FLOPs, and how many mm products one mm call does."""
    torch.manual_seed(0)
    arm_cfg = config_for(size, "arm", args.vocab, args.seq_len)
    mdm_cfg = config_for(size, "mdm", args.vocab, args.seq_len)
    window = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1))
    ours_arm, mdm = Transformer(arm_cfg), Transformer(mdm_cfg)
    hf = hf_llama(ours_arm)
    print(check_agreement(ours_arm, hf, mdm, window))

    contenders = {
        "ours-arm": step_call(ours_arm, training_loss, window),
        "hf-arm": step_call(hf, lambda m, w, g: hf_loss(m, w), window),
        "ours-mdm": step_call(mdm, training_loss, window),
        "mdm-fullhead": step_call(clone(mdm), mdm_loss_full_head, window),
    }
    if args.compile:
        contenders["ours-arm-compiled"] = step_call(torch.compile(clone(ours_arm)), training_loss, window)
    if args.fused_adamw:
        contenders["ours-arm-fusedadamw"] = step_call(clone(ours_arm), training_loss, window, fused=True)
    if args.alt_threads:
        contenders[f"ours-arm-{args.alt_threads}thr"] = step_call(clone(ours_arm), training_loss, window,
                                                               threads=args.alt_threads)
    mm, mm_flops = matmul_call(args.mm_size)
    mm_inner = max(1, round(2e9 / mm_flops))
    contenders["mm"] = repeated(mm, mm_inner)
    contenders["mm-shapes"], shapes_flops = shapes_call(training_matmul_shapes(arm_cfg, args.batch, args.seq_len))
    flops = {name: training_matmul_flops(mdm_cfg if "mdm" in name else arm_cfg, args.batch, args.seq_len)
             for name in contenders if not name.startswith("mm")}
    flops["mm"], flops["mm-shapes"] = mm_flops, shapes_flops
    return contenders, flops, mm_inner


def bench_size(size: str, args) -> None:
    contenders, flops, mm_inner = build_contenders(size, args)
    arm_cfg = config_for(size, "arm", args.vocab, args.seq_len)
    cpu: dict[str, list[float]] = {}
    wall = interleaved(contenders, args.repeats, inner=args.inner, warmup=args.warmup, cpu=cpu)
    for samples in (wall, cpu):
        samples["mm"] = [t / mm_inner for t in samples["mm"]]  # seconds per product
    tokens = args.batch * args.seq_len

    print(f"\n== {size}: {arm_cfg.n_layer} layers, d={arm_cfg.d_model}, heads={arm_cfg.n_head}, "
          f"vocab={args.vocab}, batch {args.batch} x {args.seq_len}, N={arm_cfg.n_params:,}, "
          f"matmul GFLOP/step arm {flops['ours-arm'] / 1e9:.2f} mdm {flops['ours-mdm'] / 1e9:.2f}")
    print(f"{'contender':>18} {'wall ms':>8} {'spread':>6} {'cpu ms':>7} {'tokens/s':>9} {'GFLOP/s':>8} {'cpu-GFLOP/s':>11}")
    for name in flops:
        label = f"mm{args.mm_size}" if name == "mm" else name
        t, c = median(wall[name]), median(cpu[name])
        tok = " " * 9 if name.startswith("mm") else f"{tokens / t:9.0f}"
        print(f"{label:>18} {t * 1e3:8.1f} {spread(wall[name]):6.2f} {c * 1e3:7.1f} {tok} "
              f"{flops[name] / t / 1e9:8.1f} {flops[name] / c / 1e9:11.1f}")
    print_ratios(wall, cpu, flops)


def print_ratios(wall: dict[str, list[float]], cpu: dict[str, list[float]], flops: dict[str, float]) -> None:
    print("ratios, median of per-repeat ratios (wall | process CPU time):")

    def both(top: str, bottom: str) -> str:
        return f"{paired_ratio(wall, top, bottom):6.3f} | {paired_ratio(cpu, top, bottom):6.3f}"

    print(f"  ours-arm / hf-arm step time       {both('ours-arm', 'hf-arm')}  (goal <= 1.0)")
    print(f"  ours-mdm / ours-arm step time     {both('ours-mdm', 'ours-arm')}  (goal <= 1.1)")
    print(f"  mdm-fullhead / ours-arm           {both('mdm-fullhead', 'ours-arm')}")
    print(f"  ours-mdm / mdm-fullhead           {both('ours-mdm', 'mdm-fullhead')}")
    for name in [n for n in wall if n.startswith("ours-arm-")]:
        print(f"  {name + ' / ours-arm':<33} {both(name, 'ours-arm')}")
    for ceiling in ("mm", "mm-shapes"):
        for name in [n for n in flops if not n.startswith("mm")]:
            # achieved / ceiling = (flops / t_step) / (ceiling_flops / t_ceiling), per repeat
            util = [median([flops[name] * c / (flops[ceiling] * x) for x, c in zip(s[name], s[ceiling])])
                    for s in (wall, cpu)]
            goal = "  (goal >= 0.6)" if ceiling == "mm" else ""
            print(f"  {name + ' FLOP/s / ' + ceiling + ' rate':<33} {util[0]:6.3f} | {util[1]:6.3f}{goal}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["410k", "1.31M"], help="names in MODEL_SIZES")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary size")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats")
    parser.add_argument("--inner", type=int, default=5, help="steps per repeat and contender")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first")
    parser.add_argument("--mm-size", type=int, default=2048, help="square matmul size for the ceiling")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of our ARM")
    parser.add_argument("--fused-adamw", action="store_true", help="also time our ARM with AdamW(fused=True)")
    parser.add_argument("--alt-threads", type=int, default=0, help="also time our ARM at this many threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    wall, cpu = time.perf_counter(), time.process_time()
    for size in args.sizes:
        bench_size(size, args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"\n{machine_line()}\nthis process: {cpu:.0f} CPU-s in {wall:.0f} s wall = {cpu / wall:.2f} cores busy "
          f"(below the thread count = other processes took cores)")


if __name__ == "__main__":
    main()
