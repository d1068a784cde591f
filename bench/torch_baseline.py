#!/usr/bin/env python3
"""What plain PyTorch achieves on Birdbone's benchmark workload.

The workload is the one `birdbone-bench` prunes: the linear weights of a Mistral-7B-shaped
decoder (per layer q 4096x4096, k 1024x4096, v 1024x4096, o 4096x4096, gate 14336x4096,
up 14336x4096, down 4096x14336; 32 layers = 6.98 B parameters), bf16, N(0, 0.02), resident on
the device, pruned in place to 50%. Each method gets fresh weights and is timed between two
device synchronisations. For each it prints the time, the peak device memory it needed beyond
the weights, and the sparsity it reached.

    python3 bench/torch_baseline.py                  # 32 layers on the GPU (what gpu-run.sh runs)
    python3 bench/torch_baseline.py 1 --device cpu --scale 0.0625   # a smoke check on a CPU

The methods:
  kthvalue-per-tensor   layer-wise 50%: each tensor's k-th smallest |w| by `kthvalue`
  rowsort-per-row       Wanda-style: sort each output row's |w|, prune the lower half
  topk-2:4              2:4: `topk` over groups of 4 along each row
  sampled-global        global 50% from the k-th value of a 16M-element random sample (approximate)
  prune-global-l1       `torch.nn.utils.prune.global_unstructured` with L1, amount 0.5
"""

import argparse
import gc
import json
import time

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

# (out_features, in_features) of one decoder layer's linear weights, Mistral-7B.
LAYER_SHAPES = {
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (1024, 4096),
    "self_attn.v_proj": (1024, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (14336, 4096),
    "mlp.up_proj": (14336, 4096),
    "mlp.down_proj": (4096, 14336),
}
SPARSITY = 0.5
SAMPLE = 1 << 24  # elements in the sampled-global method's sample


def scaled(dim, scale):
    """A dimension shrunk by `scale`, kept a multiple of 8 (2:4 groups and whole rows)."""
    return max(8, int(round(dim * scale / 8)) * 8)


def make_linears(layers, scale, device, dtype, seed):
    """Fresh weights as nn.Linear modules (what torch.nn.utils.prune works on)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    mods = []
    for _ in range(layers):
        for out_f, in_f in LAYER_SHAPES.values():
            lin = nn.Linear(scaled(in_f, scale), scaled(out_f, scale), bias=False,
                            device=device, dtype=dtype)
            lin.weight.requires_grad_(False)
            lin.weight.normal_(0.0, 0.02, generator=gen)
            mods.append(lin)
    return mods


# ------------------------------------------------------------------------------------------
# The methods. Each prunes `mods` in place to SPARSITY (under no_grad).

def kthvalue_per_tensor(mods, device):
    for m in mods:
        w = m.weight
        k = int(w.numel() * SPARSITY)
        cut = w.abs().flatten().float().kthvalue(k).values
        w.masked_fill_(w.abs() <= cut, 0)


def rowsort_per_row(mods, device):
    # The Wanda reference code's selection: a stable sort of each row's metric, the first half
    # of the indices pruned. The metric here is |w| (no activation norms in this workload).
    for m in mods:
        w = m.weight
        drop = int(w.shape[1] * SPARSITY)
        order = torch.sort(w.abs(), dim=1, stable=True).indices[:, :drop]
        pruned = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        pruned.scatter_(1, order, True)
        w.masked_fill_(pruned, 0)


def topk_2_4(mods, device):
    for m in mods:
        w = m.weight
        groups = w.abs().reshape(-1, 4)
        weakest = groups.topk(2, dim=1, largest=False).indices
        pruned = torch.zeros(groups.shape, dtype=torch.bool, device=w.device)
        pruned.scatter_(1, weakest, True)
        w.masked_fill_(pruned.view(w.shape), 0)


def sampled_global(mods, device):
    total = sum(m.weight.numel() for m in mods)
    want = min(SAMPLE, total)
    parts = []
    for m in mods:
        flat = m.weight.view(-1)
        n = max(1, flat.numel() * want // total)
        picks = torch.randint(flat.numel(), (n,), device=flat.device)
        parts.append(flat[picks].abs().float())
    sample = torch.cat(parts)
    cut = sample.kthvalue(max(1, int(sample.numel() * SPARSITY))).values
    for m in mods:
        m.weight.masked_fill_(m.weight.abs() <= cut, 0)


def prune_global_l1(mods, device):
    targets = [(m, "weight") for m in mods]
    tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=SPARSITY)
    for m in mods:
        tprune.remove(m, "weight")  # make it permanent: weight = weight_orig * mask


METHODS = {
    "kthvalue-per-tensor": kthvalue_per_tensor,
    "rowsort-per-row": rowsort_per_row,
    "topk-2:4": topk_2_4,
    "sampled-global": sampled_global,
    # Last: it runs out of memory at full size, and what it leaves behind should not affect the rest.
    "prune-global-l1": prune_global_l1,
}


# ------------------------------------------------------------------------------------------

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_speed(device):
    """Device-to-device copy speed in TB/s (read + write): the memory-bandwidth floor's unit."""
    n = 1 << 31
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    start = time.perf_counter()
    reps = 10
    for _ in range(reps):
        dst.copy_(src)
    synchronize(device)
    speed = 2 * n * reps / (time.perf_counter() - start) / 1e12
    del src, dst
    return speed


def measure(name, fn, args, device, dtype):
    """Runs one method on fresh weights; returns a result dict."""
    mods = make_linears(args.layers, args.scale, device, dtype, args.seed)
    gc.collect()
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.empty_cache()
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    result = {"method": name}
    start = time.perf_counter()
    try:
        with torch.no_grad():
            fn(mods, device)
        synchronize(device)
        result["ms"] = (time.perf_counter() - start) * 1e3
    except (torch.OutOfMemoryError, MemoryError):
        result["ms"] = None
        result["oom_after_s"] = time.perf_counter() - start
    if on_cuda:
        result["extra_gib"] = (torch.cuda.max_memory_allocated(device) - resident) / 2**30
    if result["ms"] is not None:
        zeros = sum(int((m.weight == 0).sum()) for m in mods)
        total = sum(m.weight.numel() for m in mods)
        result["sparsity"] = zeros / total
    del mods
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return result


def line(r):
    if r["ms"] is None:
        what = f"out of memory after {r['oom_after_s']:.1f} s"
        if "extra_gib" in r:
            what += f" (had allocated {r['extra_gib']:.2f} GiB beyond the weights)"
        return f"{r['method']:22s} {what}"
    extra = f"{r['extra_gib']:7.2f} GiB" if "extra_gib" in r else "    n/a    "
    return (f"{r['method']:22s} {r['ms']:11.1f} ms   extra {extra}   "
            f"sparsity {100 * r['sparsity']:.2f}%")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("layers", nargs="?", type=int, default=32,
                   help="decoder layers (32: Mistral-7B)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="shrink every dimension by this factor (0.0625 for a quick CPU check)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: pass --device cpu (with a small --scale)")
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    chosen = [m for m in args.methods.split(",") if m]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")

    per_layer = sum(scaled(o, args.scale) * scaled(i, args.scale) for o, i in LAYER_SHAPES.values())
    params = per_layer * args.layers
    gib = params * torch.empty(0, dtype=dtype).element_size() / 2**30
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"PyTorch {torch.__version__} on {where}")
    print(f"workload: {args.layers} layers, {params:,} parameters ({gib:.3f} GiB {args.dtype}), "
          f"N(0, 0.02), pruned in place to {SPARSITY:.0%}")
    summary = {"torch": torch.__version__, "device": where, "layers": args.layers,
               "scale": args.scale, "dtype": args.dtype, "parameters": params, "results": []}
    if device.type == "cuda":
        summary["copy_tb_s"] = copy_speed(device)
        print(f"device copy: {summary['copy_tb_s']:.2f} TB/s (read + write)")
    for name in chosen:
        r = measure(name, METHODS[name], args, device, dtype)
        print(line(r), flush=True)
        summary["results"].append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
