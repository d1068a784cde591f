#!/usr/bin/env python3
"""The IST-DASLab/sparsegpt reference pass, timed, on a Mistral-7B-shaped model with random weights.

Measures the wall time of the reference SparseGPT (`llama.py` `llama_sequential` + `sparsegpt.py`
`SparseGPT.add_batch`/`fasterprune`, ported verbatim: fp32 Hessian, percdamp 0.01, blocksize 128,
per-block unstructured mask from W^2/diag(Hinv)^2 by `sort(...)[int(numel*s)]` and `<=`, N:M chosen
at each group's first column by topk, the per-column OBS loop, lazy block updates), or with
`--method wanda` of Wanda (locuslab/wanda `prune_wanda`: |W|*sqrt(scaler_row) per output row,
sequential), on MistralForCausalLM (hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 kv
heads, vocab 32000) with N(0, 0.02) bf16 weights made on the GPU, sdpa attention, whole model
resident. Calibration: `--samples` seeded random token sequences of `--seq-len` tokens, forwarded
`--calib-batch` at a time (1 by default, as the reference).

Per decoder block, each part between `torch.cuda.synchronize()` calls:
  calib_s  calibration: hooks on the block's 7 Linears, the forward of every sample through the
           block with the Hessian (Wanda: squared input norms) accumulated in the hooks, and the
           second forward of every sample through the pruned block (the next block's inputs).
  solve_s  solve and update: `fasterprune` of q,k,v,o,gate,up,down in that order (dead columns,
           damping, Cholesky, cholesky_inverse, Cholesky, mask selection, the per-column loop,
           the lazy block updates, the bf16 write-back, `free`).
Also construct_s (building the model; not part of the pass), capture_s (capturing layer 0's
inputs), end_to_end_s (capture + all blocks), the peak device memory of the pass and its excess
over the model's weights. One JSON object goes to stdout (and to `--json PATH`).

On the GPU machine (H100: roughly 4-6 min and ~21 GB peak for all 32 blocks; blocks cost alike):
    python bench/sparsegpt_reference.py --sparsity 0.5 --json out.json
    python bench/sparsegpt_reference.py --pattern 2:4 --blocks 8 --json out24.json
    python bench/sparsegpt_reference.py --method wanda --json wanda.json
    python bench/sparsegpt_reference.py --blocks 1 --dump dump/        # mask-agreement dump
CPU smoke test: python bench/sparsegpt_reference.py --tiny --device cpu --threads 2

`--pattern N:M` keeps N of every M (prunen = M - N, prunem = M) and overrides `--sparsity`.
`--blocks N` prunes the first N blocks and stops (later blocks are not forwarded).
`--dump DIR` writes DIR/layer0.<linear>.safetensors for self_attn.q_proj and mlp.down_proj:
`weight` (bf16, before pruning), `hessian` (fp32 as accumulated, before dead-column handling and
damping; Wanda: `scaler_row`), `keep_mask` (uint8, 1 = kept), `pruned_weight` (bf16); the config
and the reference's error are in the metadata ("" for none). Its copies are not timed.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn

torch.backends.cuda.matmul.allow_tf32 = False  # as sparsegpt.py
torch.backends.cudnn.allow_tf32 = False

DUMP_NAMES = ("self_attn.q_proj", "mlp.down_proj")


def now(dev):
    """perf_counter once the device has finished its queued work."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def flat(inp):
    """add_batch's common start: the input as (columns, tokens), and its batch size."""
    if len(inp.shape) == 2:
        inp = inp.unsqueeze(0)
    tmp = inp.shape[0]
    if len(inp.shape) == 3:
        inp = inp.reshape((-1, inp.shape[-1]))
    return inp.t(), tmp


class SparseGPT:
    """sparsegpt.py's SparseGPT for nn.Linear (no quantizer, no DEBUG prints)."""

    def __init__(self, layer):
        self.layer = layer
        self.dev = layer.weight.device
        W = layer.weight.data.clone()  # as the reference, which only reads its shape
        self.rows, self.columns = W.shape
        self.H = torch.zeros((self.columns, self.columns), device=self.dev)
        self.nsamples = 0

    def add_batch(self, inp, out):
        inp, tmp = flat(inp)
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def stat(self):
        return "hessian", self.H

    def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01, record=False):
        W = self.layer.weight.data.clone().float()
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        Losses = torch.zeros(self.rows, device=self.dev)

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=self.dev)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        mask = None
        pruned = torch.zeros_like(W, dtype=torch.bool) if record else None
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prunen == 0:
                if mask is not None:
                    mask1 = mask[:, i1:i2]
                else:
                    tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                    thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                    mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d ** 2
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            Losses += torch.sum(Losses1, 1) / 2
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
            if record:
                pruned[:, i1:i2] = mask1

        now(self.dev)
        error = torch.sum(Losses).item()  # the reference prints it
        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        return pruned, error

    def free(self):
        self.H = None
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()


class Wanda:
    """wanda's WrappedGPT statistic and prune_wanda's per-row selection (no variant search)."""

    def __init__(self, layer):
        self.layer = layer
        self.dev = layer.weight.device
        self.scaler_row = torch.zeros((layer.weight.shape[1],), device=self.dev)
        self.nsamples = 0

    def add_batch(self, inp, out):
        inp, tmp = flat(inp)
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples

    def stat(self):
        return "scaler_row", self.scaler_row

    def fasterprune(self, sparsity, prunen=0, prunem=0, record=False, **_):
        W_metric = torch.abs(self.layer.weight.data) * torch.sqrt(self.scaler_row.reshape((1, -1)))
        W_mask = torch.zeros_like(W_metric) == 1
        if prunen != 0:
            for ii in range(W_metric.shape[1]):
                if ii % prunem == 0:
                    tmp = W_metric[:, ii:(ii + prunem)].float()
                    W_mask.scatter_(1, ii + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
        else:
            sort_res = torch.sort(W_metric, dim=-1, stable=True)
            indices = sort_res[1][:, :int(W_metric.shape[1] * sparsity)]
            W_mask.scatter_(1, indices, True)
        self.layer.weight.data[W_mask] = 0
        now(self.dev)
        return (W_mask if record else None), 0.0

    def free(self):
        self.scaler_row = None
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()


def build_model(tiny, seed, dev):
    from transformers import MistralConfig, MistralForCausalLM
    dims = (dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000) if tiny else
            dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=32000))
    cfg = MistralConfig(**dims, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000,
                        sliding_window=None, use_cache=False, attn_implementation="sdpa")
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(dev):  # parameters are born on the device, in bf16
            model = MistralForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():  # our own seeded init, drawn in fp32 (bf16 normal_ on a CPU gives zeros)
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.empty(p.shape, device=dev).normal_(0.0, 0.02, generator=gen))
            else:
                p.fill_(1.0)
    return model.eval(), dims


class _Caught(Exception):
    pass


def capture(model, ids, bs, inps):
    """The reference's Catcher, as a pre-hook on layer 0 that raises: every sample's layer-0
    input into `inps`, and the keyword arguments the decoder layers get (transformers 5.x:
    position_embeddings, position_ids, attention_mask, the cache ...), returned."""
    state = {}

    def catcher(_mod, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        inps[state["i"]:state["i"] + hs.shape[0]] = hs
        state["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Caught

    handle = model.model.layers[0].register_forward_pre_hook(catcher, with_kwargs=True)
    try:
        for j in range(0, ids.shape[0], bs):
            state["i"] = j
            try:
                model(ids[j:j + bs].to(inps.device), use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    return state["kw"]


def forward_all(layer, inps, outs, kw, bs):
    for j in range(0, inps.shape[0], bs):
        out = layer(inps[j:j + bs], **kw)
        outs[j:j + bs] = out[0] if isinstance(out, (tuple, list)) else out  # 5.x returns a tensor


def check(W, prunen, prunem, sparsity, method, bs):
    """Zeros of a pruned weight and (min, max) of their excess over what the rule gives: N:M
    prunen per group; Wanda int(cols*s) per row; SparseGPT's `<=` at the sorted value of index
    int(n*s): int(n*s)+1 per block of columns (more only on ties at the threshold)."""
    Z = W == 0
    rows, cols = Z.shape
    if prunen:
        ex = Z.reshape(rows, cols // prunem, prunem).sum(-1) - prunen
    elif method == "wanda":
        ex = Z.sum(1) - int(cols * sparsity)
    else:
        ex = torch.tensor([int(Z[:, i:i + bs].sum()) - int(rows * min(bs, cols - i) * sparsity) - 1
                           for i in range(0, cols, bs)])
    return int(Z.sum()), int(ex.min()), int(ex.max())


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=("sparsegpt", "wanda"), default="sparsegpt")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--pattern", help="N:M, keep N of every M (overrides --sparsity)")
    ap.add_argument("--blocks", type=int, help="prune only the first N decoder blocks")
    ap.add_argument("--samples", type=int, help="calibration sequences (128; --tiny 4)")
    ap.add_argument("--seq-len", type=int, help="tokens per sequence (2048; --tiny 128)")
    ap.add_argument("--calib-batch", type=int, default=1)
    ap.add_argument("--percdamp", type=float, default=0.01)
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as is)")
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 256: a smoke test")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--dump", help="write the layer-0 mask-agreement dump into this folder")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = args.samples or (4 if args.tiny else 128)
    seq_len = args.seq_len or (128 if args.tiny else 2048)
    prunen = prunem = 0
    if args.pattern:
        n, m = (int(x) for x in args.pattern.split(":"))
        prunen, prunem = m - n, m
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    Solver = SparseGPT if args.method == "sparsegpt" else Wanda

    t = now(dev)
    model, dims = build_model(args.tiny, args.seed, dev)
    construct_s = now(dev) - t
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    layers = model.model.layers
    nblocks = min(args.blocks or len(layers), len(layers))
    ids = torch.randint(0, dims["vocab_size"], (samples, seq_len),
                        generator=torch.Generator().manual_seed(args.seed + 1))
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    t_start, untimed = now(dev), 0.0
    inps = torch.zeros((samples, seq_len, dims["hidden_size"]), dtype=torch.bfloat16, device=dev)
    kw = capture(model, ids, args.calib_batch, inps)
    outs = torch.zeros_like(inps)
    capture_s = now(dev) - t_start

    calib, solve, by_linear, checks, dumped = [], [], {}, {}, {}
    for i in range(nblocks):
        layer = layers[i]
        t0 = now(dev)
        full = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        gpts = {n: Solver(m) for n, m in full.items()}
        hooks = [full[n].register_forward_hook(
            lambda _m, inp, out, n=n: gpts[n].add_batch(inp[0].data, out.data)) for n in full]
        forward_all(layer, inps, outs, kw, args.calib_batch)
        for h in hooks:
            h.remove()
        t1 = now(dev)
        dump = [n for n in DUMP_NAMES if n in full] if args.dump and i == 0 else []
        for n in dump:  # untimed: copies of the weight and the statistic before the solve
            key, stat = gpts[n].stat()
            dumped[n] = {"weight": full[n].weight.data.cpu().clone(), key: stat.cpu().clone()}
        t1b = now(dev)
        untimed += t1b - t1
        for n in full:
            ta = time.perf_counter()
            mask, err = gpts[n].fasterprune(args.sparsity, prunen=prunen, prunem=prunem,
                                            blocksize=args.blocksize, percdamp=args.percdamp,
                                            record=n in dump)
            gpts[n].free()
            by_linear[n] = by_linear.get(n, 0.0) + now(dev) - ta
            if n in dump:
                dumped[n].update(keep_mask=~mask, error=err)
        t2 = now(dev)
        forward_all(layer, inps, outs, kw, args.calib_batch)
        t3 = now(dev)
        calib.append((t1 - t0) + (t3 - t2))
        solve.append(t2 - t1b)
        del gpts
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        inps, outs = outs, inps
        for n, m in full.items():  # untimed: the sparsity checks and the dump's copies
            z, lo, hi = check(m.weight.data, prunen, prunem, args.sparsity, args.method,
                              args.blocksize)
            c = checks.setdefault(n, {"zeros": 0, "numel": 0, "excess_min": lo, "excess_max": hi})
            c.update(zeros=c["zeros"] + z, numel=c["numel"] + m.weight.numel(),
                     excess_min=min(c["excess_min"], lo), excess_max=max(c["excess_max"], hi))
            if n in dump:
                dumped[n].update(keep_mask=dumped[n]["keep_mask"].to(torch.uint8).cpu(),
                                 pruned_weight=m.weight.data.cpu().clone())
        untimed += now(dev) - t3
    end_to_end_s = now(dev) - t_start - untimed

    import transformers
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    cfg = {"method": args.method, "sparsity": None if prunen else args.sparsity,
           "pattern": args.pattern, "prunen": prunen, "prunem": prunem, "blocks": nblocks,
           "samples": samples, "seq_len": seq_len, "calib_batch": args.calib_batch,
           "percdamp": args.percdamp, "blocksize": args.blocksize, "seed": args.seed}
    result = {
        **cfg, "model": {**dims, "dtype": "bfloat16", "attn": model.config._attn_implementation},
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "construct_s": construct_s, "capture_s": capture_s,
        "calib_s": calib, "solve_s": solve,
        "calib_total_s": sum(calib), "solve_total_s": sum(solve),
        "solve_by_linear_s": by_linear, "end_to_end_s": end_to_end_s,
        "weight_bytes": weight_bytes, "peak_mem_bytes": peak,
        "peak_extra_bytes": None if peak is None else peak - weight_bytes,
        "checks": {n: {**c, "zero_frac": c["zeros"] / c["numel"]} for n, c in checks.items()},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if args.dump:
        from safetensors.torch import save_file
        os.makedirs(args.dump, exist_ok=True)
        for n, d in dumped.items():
            meta = {**cfg, "layer": 0, "linear": n, "error": d.pop("error")}
            meta = {k: "" if v is None else str(v) for k, v in meta.items()}
            save_file({k: v.contiguous() for k, v in d.items()},
                      os.path.join(args.dump, f"layer0.{n}.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
