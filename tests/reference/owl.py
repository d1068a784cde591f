"""Reference OWL (outlier-weighted layer-wise sparsity) over Wanda under Birdbone's quality protocol.

    python tests/reference/owl.py --model .cache/smollm2-135m --sparsity 0.7 \
        [--M 5] [--lamda 0.08] [--exact-count] [--text-dir D] [--threads 2] [--device cpu]

Prints one JSON line: sparsity, M, lamda, exact_count, ppl, nll, layer_sparsity (one per decoder
layer), zero_fraction, prune_seconds, eval_seconds.

The published algorithm (Yin et al., 2023; the authors' lib/prune.py `prune_wanda_outlier`),
written out on the protocol's model, text and tokenization (tests/reference/sparsegpt_ria.py):

  1. Calibration inputs of decoder layer 0 captured; for each layer, every Linear's Wanda
     statistics from the dense layer (scaler_row: the running mean of squared input norms),
     the metric |W| * sqrt(scaler_row) of every Linear of the layer concatenated, and the
     layer's outlier ratio: 100 * #(metric > M * mean(metric)) / numel. The layer's dense output
     feeds the next (no pruning in this first pass).
  2. ratios = (r - min r) / (max r - min r) * 2 * lamda; density = ratios - mean(ratios) +
     (1 - sparsity): the layer's sparsity is 1 - density, within +-lamda of the target.
  3. Sequential Wanda (the authors' second loop): calibration inputs captured again; for each
     layer, statistics from the layer as it is, every Linear pruned per output row at the
     layer's sparsity (the first int(cols * s_layer) of a stable sort; --exact-count: Birdbone's
     exact integer allocation instead, see below), the pruned layer's outputs feed the next.

--exact-count: the per-layer sparsities become integer counts as Birdbone's allocator makes
them: each Linear's share round(s_layer * numel) by largest remainder so the model's total is
exactly round(s * N), split over rows (the first rows one more) - the same allocation the
published rounding approximates with int(cols * s_layer) per row.
"""

import argparse
import json
import math
import os
import time

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

import sparsegpt_ria as ref


def check_outlier_mean(metric, threshold):
    # The authors' check_outlier_mean: percentage of entries above threshold x the mean.
    count = torch.sum(metric > torch.mean(metric) * threshold).item()
    return float(count) / metric.numel() * 100


def capture(model, calib):
    layers = model.model.layers
    store = {"inps": [], "kwargs": None}
    layers[0] = ref.Catcher(layers[0], store)
    for j in range(calib.shape[0]):
        try:
            model(calib[j:j + 1], use_cache=False)
        except ValueError:
            pass
    layers[0] = layers[0].module
    return store["inps"], store["kwargs"]


def run_layer(layer, xs, kw):
    outs = []
    for x in xs:
        out = layer(x, **kw)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def collect(layer, inps, kw):
    subset = ref.find_linears(layer)
    wrapped = {name: ref.WrappedGPT(subset[name]) for name in subset}
    handles = [subset[n].register_forward_hook(
        (lambda n: lambda _m, inp, out: wrapped[n].add_batch(inp[0].data, out.data))(n))
        for n in subset]
    run_layer(layer, inps, kw)
    for h in handles:
        h.remove()
    return subset, wrapped


@torch.no_grad()
def owl_sparsities(model, calib, sparsity, M, lamda):
    inps, kw = capture(model, calib)
    ratios = []
    for layer in model.model.layers:
        subset, wrapped = collect(layer, inps, kw)
        metric = torch.cat([
            torch.flatten(torch.abs(subset[n].weight.data)
                          * torch.sqrt(wrapped[n].scaler_row.reshape((1, -1))))
            for n in subset])
        ratios.append(check_outlier_mean(metric, M))
        inps = run_layer(layer, inps, kw)
    r = torch.tensor(ratios, dtype=torch.float64)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lamda * 2)
    density = r - r.mean() + (1 - sparsity)
    return [float(1 - d) for d in density]


def exact_counts(model, layer_sparsity, sparsity):
    """Birdbone's rule: per Linear, its layer's sparsity times numel, rounded by largest
    remainder (ties: earlier layer, then earlier Linear in name order) so the total is exactly
    round(sparsity * N). Returns {(layer, name): count}."""
    shares = []
    for i, layer in enumerate(model.model.layers):
        for name, m in sorted(ref.find_linears(layer).items()):
            shares.append(((i, name), layer_sparsity[i] * m.weight.numel(), m.weight.numel()))
    total = math.floor(sparsity * sum(n for _, _, n in shares) + 0.5)
    counts = {k: math.floor(v) for k, v, _ in shares}
    left = total - sum(counts.values())
    order = sorted(range(len(shares)), key=lambda j: (-(shares[j][1] - math.floor(shares[j][1])), j))
    for j in order[:left]:
        counts[shares[j][0]] += 1
    return counts


@torch.no_grad()
def prune_wanda(model, calib, layer_sparsity, counts):
    inps, kw = capture(model, calib)
    for i, layer in enumerate(model.model.layers):
        subset, wrapped = collect(layer, inps, kw)
        for name in subset:
            W = subset[name].weight.data
            metric = torch.abs(W) * torch.sqrt(wrapped[name].scaler_row.reshape((1, -1)))
            rows, cols = metric.shape
            order = torch.sort(metric, dim=-1, stable=True)[1]
            mask = torch.zeros_like(metric, dtype=torch.bool)
            if counts is None:
                mask.scatter_(1, order[:, :int(cols * layer_sparsity[i])], True)
            else:
                c = counts[(i, name)]
                base, extra = divmod(c, rows)
                for r in range(rows):
                    mask[r, order[r, :base + (1 if r < extra else 0)]] = True
            W[mask] = 0
        inps = run_layer(layer, inps, kw)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--M", type=float, default=5.0)
    p.add_argument("--lamda", type=float, default=0.08)
    p.add_argument("--exact-count", action="store_true")
    p.add_argument("--text-dir", default=ref.DEFAULT_TEXT_DIR)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--float64", action="store_true",
                   help="model and statistics in float64: how far float32 rounding alone moves "
                        "the result")
    args = p.parse_args()
    if args.float64:
        ref.ACC = torch.float64
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=ref.ACC).eval()
    model.to(args.device)
    model.config.use_cache = False

    t0 = time.time()
    calib = ref.windows(tok, os.path.join(args.text_dir, "c4.utf8"), ref.N_CALIB).to(args.device)
    layer_sparsity = owl_sparsities(model, calib, args.sparsity, args.M, args.lamda)
    counts = exact_counts(model, layer_sparsity, args.sparsity) if args.exact_count else None
    prune_wanda(model, calib, layer_sparsity, counts)
    t_prune = time.time() - t0

    t0 = time.time()
    eval_ids = ref.windows(tok, os.path.join(args.text_dir, "wiki.utf8"), ref.N_EVAL).to(args.device)
    nll, n_tok = ref.evaluate(model, eval_ids)
    print(json.dumps({
        "method": "owl-wanda",
        "sparsity": args.sparsity,
        "M": args.M,
        "lamda": args.lamda,
        "exact_count": args.exact_count,
        "float64": args.float64,
        "ppl": math.exp(nll),
        "nll": nll,
        "eval_tokens": n_tok,
        "layer_sparsity": layer_sparsity,
        "zero_fraction": ref.zero_fraction(model),
        "prune_seconds": round(t_prune, 1),
        "eval_seconds": round(time.time() - t0, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
