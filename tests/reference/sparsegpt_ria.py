"""Reference SparseGPT / RIA / Wanda pruning of a Llama folder under Birdbone's quality protocol.

    python tests/reference/sparsegpt_ria.py --model .cache/smollm2-135m --method sparsegpt \
        --sparsity 0.5 [--pattern 2:4] [--exact-count] [--save DIR] [--text-dir D] [--threads 2]

Prints one JSON line: method, sparsity, pattern, exact_count, ppl, nll, eval_tokens,
zero_fraction (zeros / numel over every nn.Linear weight inside model.model.layers),
prune_seconds (calibration + pruning), eval_seconds.

Protocol (docs/quality.md)
  * Tokens: tokenizers.Tokenizer.from_file(MODEL/tokenizer.json).encode(text,
    add_special_tokens=False).ids of the whole file.
  * Eval: wiki.utf8, first 64 non-overlapping windows of 512 tokens, each scored on its own
    (no cross-window context); ppl = exp(mean next-token NLL over 64 x 511 positions).
  * Calibration: c4.utf8, first 32 non-overlapping windows of 512 tokens, one sample each
    (batch 1).
  * Float32 on CPU, model loaded with AutoModelForCausalLM.from_pretrained(dtype=float32).

Sequential flow (IST-DASLab/sparsegpt llama.py `llama_sequential`, Wanda/RIA `prune_*`):
  the inputs of decoder layer 0 are captured with a raising Catcher (hidden states + the
  kwargs transformers 5 passes: attention_mask, position_embeddings, position_ids, ...).
  For each layer: forward hooks on every nn.Linear of the layer, all samples through the
  dense layer (statistics), hooks removed, every Linear pruned (all from the same dense-layer
  statistics, i.e. not "true sequential"), all samples through the pruned layer -> inputs of
  the next layer. transformers 5 decoder layers return a tensor, not a tuple.

--pattern N:M means KEEP N of every M consecutive input columns (prunen = M - N, prunem = M).

SparseGPT (sparsegpt.py, SparseGPT class, blocksize 128, percdamp 0.01)
  add_batch: tmp = #sequences; H *= n/(n+tmp); n += tmp; x = sqrt(2/n) x.float(); H += x x^T.
  fasterprune: dead columns (diag H == 0) get H[d,d] = 1, W[:,d] = 0; damp = 0.01 mean(diag H);
  Hinv = chol(chol_inverse(chol(H + damp I)), upper).  Per 128-column block:
    score = W1^2 / diag(Hinv1)^2 on the block's columns before any update inside the block.
    published rounding: thresh = sort(score.flat)[int(numel * s)]; mask = score <= thresh,
      i.e. int(numel*s)+1 entries pruned (more if there are ties at thresh).
    --exact-count: exactly floor(numel*s + 0.5) entries pruned per block; ties broken by a
      stable sort, so among equal scores the lower flat row-major index is pruned first.
    N:M: at each column i with i % M == 0 (block-relative; 128 is a multiple of M),
      score = W1[:, i:i+M]^2 / diag(Hinv1)[i:i+M]^2 on the already updated W1; the (M-N)
      lowest per row by topk(largest=False) (published; torch's tie order) or, with
      --exact-count, by a stable sort (lower column index first). The unstructured mask is
      not used when N:M is given (as in the published code).
    OBS loop per column: q = w with masked rows zeroed; err = (w - q)/Hinv1[i,i];
    W1[:, i:] -= err (x) Hinv1[i, i:]; then W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:].
RIA (a = 0.5): metric = (|W|/sum(|W|, dim=0) + |W|/sum(|W|, dim=1)[:,None]) * sqrt(scaler_row)^a
Wanda:         metric = |W| * sqrt(scaler_row)
  scaler_row (Wanda's WrappedGPT): r *= n/(n+tmp); n += tmp; r += ||x_col||^2 / n.
  unstructured: per output row, torch.sort(metric, dim=1, stable=True), the first
    int(cols * s) indices pruned (ties: lower column index first); no channel permutation,
    no reallocation (RIA's default is per-layer; per-row is the variant chosen here).
  N:M: per group of M along the row, the (M-N) lowest by topk(largest=False).

Ties are real here: the SmolLM2 weights sit on an f16 grid, so equal |w| (and equal scores) are
common. torch.topk on CPU does not break ties lowest-index-first (it was seen pruning the higher
index), and one flipped decision spreads through all later layers of the sequential flow
(SparseGPT 2:4: ppl 65.25 with topk, 65.00 with the stable rule). Runs are bit-reproducible.
"""
import argparse
import json
import math
import os
import shutil
import time

import torch
import torch.nn as nn
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

SEQ, N_EVAL, N_CALIB = 512, 64, 32
# Statistics and solve type; --float64 makes it (and the model) float64.
ACC = torch.float32
DEFAULT_TEXT_DIR = "/work/main/.cache/wheels/exllamav2/conversion/standard_cal_data"


def windows(tok, path, n):
    with open(path, encoding="utf-8") as f:
        ids = tok.encode(f.read(), add_special_tokens=False).ids
    assert len(ids) >= n * SEQ, f"{path}: {len(ids)} tokens < {n * SEQ}"
    return torch.tensor(ids[: n * SEQ], dtype=torch.long).view(n, SEQ)


def find_linears(module):
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


# ----------------------------------------------------------------------------------- SparseGPT
class SparseGPT:
    def __init__(self, layer):
        self.layer = layer
        self.rows, self.columns = layer.weight.shape
        self.H = torch.zeros((self.columns, self.columns), device=layer.weight.device, dtype=ACC)
        self.nsamples = 0

    def add_batch(self, inp, out):
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.to(ACC)
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01, exact=False):
        W = self.layer.weight.data.clone().to(ACC)
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=W.device)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prunen == 0:
                tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                if exact:
                    k = int(math.floor(tmp.numel() * sparsity + 0.5))
                    idx = torch.sort(tmp.flatten(), stable=True)[1][:k]
                    mask1 = torch.zeros(tmp.numel(), dtype=torch.bool, device=W.device)
                    mask1[idx] = True
                    mask1 = mask1.view_as(tmp)
                else:
                    thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                    mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                    if exact:
                        sel = torch.sort(tmp, dim=1, stable=True)[1][:, :prunen]
                    else:
                        sel = torch.topk(tmp, prunen, dim=1, largest=False)[1]
                    mask1.scatter_(1, i + sel, True)
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)


# ------------------------------------------------------------------------------- Wanda / RIA
class WrappedGPT:
    def __init__(self, layer):
        self.layer = layer
        self.scaler_row = torch.zeros(layer.weight.shape[1], device=layer.weight.device, dtype=ACC)
        self.nsamples = 0

    def add_batch(self, inp, out):
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(ACC)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples

    def prune(self, method, sparsity, prunen, prunem, a=0.5):
        W = self.layer.weight.data
        Wa = torch.abs(W)
        if method == "ria":
            metric = (Wa / torch.sum(Wa, dim=0) + Wa / torch.sum(Wa, dim=1).reshape(-1, 1)) \
                * (torch.sqrt(self.scaler_row.reshape((1, -1)))) ** a
        else:
            metric = Wa * torch.sqrt(self.scaler_row.reshape((1, -1)))
        mask = torch.zeros_like(metric) == 1
        if prunen != 0:
            for ii in range(metric.shape[1]):
                if ii % prunem == 0:
                    tmp = metric[:, ii:(ii + prunem)].to(ACC)
                    mask.scatter_(1, ii + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
        else:
            sort_res = torch.sort(metric, dim=-1, stable=True)
            indices = sort_res[1][:, : int(metric.shape[1] * sparsity)]
            mask.scatter_(1, indices, True)
        W[mask] = 0


# ------------------------------------------------------------------------------ sequential flow
class Catcher(nn.Module):
    def __init__(self, module, store):
        super().__init__()
        self.module, self.store = module, store

    def forward(self, hidden_states, *args, **kwargs):
        assert not args, "decoder layer called with extra positional args"
        self.store["inps"].append(hidden_states.detach().clone())
        self.store["kwargs"] = kwargs
        raise ValueError


@torch.no_grad()
def prune_sequential(model, calib, args, prunen, prunem):
    layers = model.model.layers
    store = {"inps": [], "kwargs": None}
    layers[0] = Catcher(layers[0], store)
    for j in range(calib.shape[0]):
        try:
            model(calib[j:j + 1], use_cache=False)
        except ValueError:
            pass
    layers[0] = layers[0].module
    inps, kw = store["inps"], store["kwargs"]

    def run_layer(layer, xs):
        outs = []
        for x in xs:
            out = layer(x, **kw)
            outs.append(out[0] if isinstance(out, tuple) else out)
        return outs

    for i, layer in enumerate(layers):
        subset = find_linears(layer)
        wrap = SparseGPT if args.method == "sparsegpt" else WrappedGPT
        gpts = {name: wrap(subset[name]) for name in subset}

        def hook(name):
            return lambda _m, inp, out: gpts[name].add_batch(inp[0].data, out.data)

        handles = [subset[name].register_forward_hook(hook(name)) for name in subset]
        run_layer(layer, inps)
        for h in handles:
            h.remove()
        for name in subset:
            if args.method == "sparsegpt":
                gpts[name].fasterprune(args.sparsity, prunen=prunen, prunem=prunem,
                                       blocksize=128, percdamp=0.01, exact=args.exact_count)
            else:
                gpts[name].prune(args.method, args.sparsity, prunen, prunem)
        del gpts
        inps = run_layer(layer, inps)


# ----------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(model, ids, batch=4):
    total, count = 0.0, 0
    for b in range(0, ids.shape[0], batch):
        x = ids[b:b + batch]
        logits = model(x, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += float(nll.double())
        count += x[:, 1:].numel()
    return total / count, count


def zero_fraction(model):
    zeros = numel = 0
    for layer in model.model.layers:
        for m in find_linears(layer).values():
            zeros += int((m.weight == 0).sum())
            numel += m.weight.numel()
    return zeros / numel


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--method", choices=["dense", "sparsegpt", "ria", "wanda"], required=True)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pattern", default=None, help="N:M = keep N of every M")
    p.add_argument("--exact-count", action="store_true",
                   help="sparsegpt: prune exactly round(s*numel) per block, stable ties")
    p.add_argument("--save", default=None)
    p.add_argument("--text-dir", default=DEFAULT_TEXT_DIR)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    p.add_argument("--float64", action="store_true",
                   help="model, statistics and solve in float64: the algorithm without float32 "
                        "rounding, to measure how far rounding alone moves the result")
    args = p.parse_args()
    global ACC
    if args.float64:
        ACC = torch.float64
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    prunen = prunem = 0
    if args.pattern:
        keep, m = (int(v) for v in args.pattern.split(":"))
        prunen, prunem = m - keep, m
        args.sparsity = prunen / prunem

    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=ACC).eval()
    model.to(args.device)
    model.config.use_cache = False

    t0 = time.time()
    if args.method != "dense":
        calib = windows(tok, os.path.join(args.text_dir, "c4.utf8"), N_CALIB).to(args.device)
        prune_sequential(model, calib, args, prunen, prunem)
    t_prune = time.time() - t0

    t0 = time.time()
    eval_ids = windows(tok, os.path.join(args.text_dir, "wiki.utf8"), N_EVAL).to(args.device)
    nll, n_tok = evaluate(model, eval_ids)
    t_eval = time.time() - t0

    if args.save:
        model.config.use_cache = True
        model.save_pretrained(args.save, safe_serialization=True)
        shutil.copy(os.path.join(args.model, "tokenizer.json"), args.save)

    print(json.dumps({
        "method": args.method,
        "sparsity": None if args.method == "dense" else args.sparsity,
        "pattern": args.pattern,
        "exact_count": args.exact_count,
        "float64": args.float64,
        "ppl": math.exp(nll),
        "nll": nll,
        "eval_tokens": n_tok,
        "zero_fraction": zero_fraction(model),
        "prune_seconds": round(t_prune, 1),
        "eval_seconds": round(t_eval, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
