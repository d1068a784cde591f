"""Second opinion on Birdbone's quality protocol with vllm-project/llm-compressor.

Prunes SmolLM2-135M with llm-compressor's SparseGPTModifier (and WandaPruningModifier) through
its own `oneshot` entry point and scores the result under Birdbone's protocol (docs/quality.md),
so that our SparseGPT/Wanda numbers can be compared against an independent implementation.

Versions used for tests/reference/llm_compressor_results.json (separate venv, not the project's):
    llmcompressor 0.14.0.1, compressed-tensors 0.19.0, transformers 5.17.0, torch 2.14.0
    (PyPI wheel +cu130, run on CPU: no GPU), datasets 5.2.0, tokenizers 0.23.3, Python 3.11.7.

How to run (2 CPU threads, float32, CPU):
    python3 -m venv /work/llmc-venv
    /work/llmc-venv/bin/pip install llmcompressor==0.14.0.1
    /work/llmc-venv/bin/python tests/reference/llm_compressor_check.py --all \
        --model .cache/smollm2-135m \
        --text-dir .cache/wheels/exllamav2/conversion/standard_cal_data \
        --out tests/reference/llm_compressor_results.json
    # one setting only (prints one JSON line):
    /work/llmc-venv/bin/python tests/reference/llm_compressor_check.py \
        --method sparsegpt --sparsity 0.5 --mask 2:4

Protocol (same as docs/quality.md and tests/reference/sparsegpt_ria.py):
  * Tokens: tokenizers.Tokenizer.from_file(MODEL/tokenizer.json).encode(text,
    add_special_tokens=False).ids over the whole file.
  * Calibration: c4.utf8, first 32 non-overlapping windows of 512 tokens, one sample each,
    handed to oneshot as a datasets.Dataset of input_ids + attention_mask (ones),
    num_calibration_samples=32, max_seq_length=512, shuffle_calibration_samples=False,
    batch_size=1.
  * Eval: wiki.utf8, first 64 non-overlapping windows of 512 tokens, each scored on its own;
    ppl = exp(mean next-token NLL over 64 x 511 positions).
  * zero_fraction: zeros / numel over every nn.Linear weight inside model.model.layers
    (q,k,v,o,gate,up,down). embed_tokens / lm_head (tied in SmolLM2) are ignored
    (ignore=["re:.*lm_head"]) and their zero count is reported as a check.

llm-compressor facts read from the installed source (0.14.0.1):
  * mask_structure "N:M" = prune N of every M consecutive input columns
    (topk(score, N, largest=False)); "2:4" prunes 2 of 4; "0:0" = unstructured.
  * oneshot's default pipeline "independent" infers "sequential" for these modifiers: the
    model is traced into one subgraph per LlamaDecoderLayer (no_split_modules); each layer
    gets a calibration pass over all samples (hooks accumulate H / row norms from the layer's
    inputs computed by the already-pruned previous layers), then all its Linears are pruned
    together (not "true sequential" inside a layer), then a second pass with hooks disabled
    propagates the pruned layer's outputs (propagate_error=True) to the next layer.
  * Calibration forwards use eager attention, no KV cache, lm_head output disabled.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=".cache/smollm2-135m")
    p.add_argument("--text-dir", default=".cache/wheels/exllamav2/conversion/standard_cal_data")
    p.add_argument("--method", choices=["dense", "sparsegpt", "wanda"], default="dense")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--mask", default="0:0", help='llm-compressor mask_structure, "N:M" = prune N of M')
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--dampening-frac", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--all", action="store_true", help="run every setting in subprocesses")
    p.add_argument("--out", default="tests/reference/llm_compressor_results.json")
    return p.parse_args()


SETTINGS = [  # in order of priority
    ("dense", 0.0, "0:0"),
    ("sparsegpt", 0.5, "0:0"),
    ("sparsegpt", 0.5, "2:4"),
    ("sparsegpt", 0.6, "0:0"),
    ("sparsegpt", 0.7, "0:0"),
    ("wanda", 0.5, "0:0"),
    ("wanda", 0.5, "2:4"),
]


NOTES = {
    "mask_structure": "llm-compressor N:M = prune N of every M input columns (2:4 = 2 pruned of 4)",
    "pipeline": "independent -> sequential: one traced subgraph per LlamaDecoderLayer; calibrate "
                "pass (hooks) -> prune all Linears of the layer -> propagate pass through the "
                "pruned layer (propagate_error=True); eager attention, no KV cache during calibration",
    "calibration_order": "shuffle_calibration_samples=False uses LengthAwareSampler "
                         "(argsort of equal lengths, descending): same 32 windows, permuted order "
                         "(16, 31..17, 0, 15..1); only float summation order differs",
    "hessian": "H = (2/n) sum_x x x^T in float32, n = number of sequences (running rescale "
               "H *= n/(n+b)), same as IST-DASLab add_batch",
    "sparsegpt": "dead diag -> 1 and W[:,dead]=0; damp = dampening_frac * mean(diag H); "
                 "Hinv = chol(cholesky_inverse(chol(H+damp I)), upper); per 128-column block "
                 "thresh = sort(W1^2/diag(Hinv1)^2)[int(numel*s)], mask <= thresh (int(numel*s)+1 "
                 "pruned per block, plus ties); N:M by topk(largest=False) on updated W1; same as "
                 "IST-DASLab fasterprune",
    "wanda": "metric |W| * sqrt(sum ||x_j||^2 / n); unstructured: per row, stable sort, first "
             "int(cols*s) pruned; N:M by topk(largest=False)",
    "defaults": "SparseGPTModifier: block_size=128, dampening_frac=0.01, mask_structure='0:0', "
                "targets=['Linear'], ignore=[] (lm_head NOT ignored by default: only a warning), "
                "preserve_sparsity_mask=False; oneshot: num_calibration_samples=512, "
                "shuffle_calibration_samples=True, batch_size=1, pipeline='independent'",
    "timing": "2-core CPU shared with a compile job (load average ~6): seconds are wall time "
              "under contention, not a benchmark",
}


def windows(tok, path, n, length=512):
    with open(path, encoding="utf-8") as f:
        ids = tok.encode(f.read(), add_special_tokens=False).ids
    assert len(ids) >= n * length, (path, len(ids))
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def evaluate(model, wins, batch):
    import torch
    import torch.nn.functional as F
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(wins), batch):
            x = torch.tensor(wins[b:b + batch], dtype=torch.long)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits
            lp = F.log_softmax(logits[:, :-1].double(), dim=-1)
            nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
            total += nll.sum().item()
            count += nll.numel()
    return total / count, count


def one(args):
    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    calib = windows(tok, os.path.join(args.text_dir, "c4.utf8"), 32)
    evalw = windows(tok, os.path.join(args.text_dir, "wiki.utf8"), 64)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()

    prune_seconds = 0.0
    if args.method != "dense":
        import datasets
        import llmcompressor
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

        ds = datasets.Dataset.from_dict(
            {"input_ids": calib, "attention_mask": [[1] * len(w) for w in calib]})
        common = dict(sparsity=args.sparsity, mask_structure=args.mask,
                      targets=["Linear"], ignore=["re:.*lm_head"])
        if args.method == "sparsegpt":
            recipe = SparseGPTModifier(block_size=args.block_size,
                                       dampening_frac=args.dampening_frac, **common)
        else:
            recipe = WandaPruningModifier(**common)
        processor = PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(args.model, "tokenizer.json"))
        t0 = time.time()
        oneshot(model=model, processor=processor, dataset=ds, recipe=recipe,
                num_calibration_samples=32, max_seq_length=512,
                shuffle_calibration_samples=False, batch_size=1)
        prune_seconds = time.time() - t0

    zeros = numel = 0
    per_kind = {}
    for name, m in model.model.layers.named_modules():
        if isinstance(m, torch.nn.Linear):
            z = (m.weight == 0).sum().item()
            zeros += z
            numel += m.weight.numel()
            k = name.split(".")[-1]
            a = per_kind.setdefault(k, [0, 0])
            a[0] += z
            a[1] += m.weight.numel()
    emb_zeros = (model.model.embed_tokens.weight == 0).sum().item()
    head_zeros = (model.lm_head.weight == 0).sum().item()

    attn_impl = getattr(model.config, "_attn_implementation", None)
    t0 = time.time()
    nll, count = evaluate(model, evalw, args.eval_batch)
    eval_seconds = time.time() - t0

    return {
        "method": args.method,
        "sparsity": args.sparsity if args.method != "dense" else 0.0,
        "mask_structure": args.mask if args.method != "dense" else None,
        "block_size": args.block_size if args.method == "sparsegpt" else None,
        "dampening_frac": args.dampening_frac if args.method == "sparsegpt" else None,
        "ppl": math.exp(nll),
        "nll": nll,
        "eval_tokens": count,
        "zero_fraction": zeros / numel,
        "zero_fraction_by_proj": {k: v[0] / v[1] for k, v in sorted(per_kind.items())},
        "embed_tokens_zeros": emb_zeros,
        "lm_head_zeros": head_zeros,
        "lm_head_tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        "prune_seconds": round(prune_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "threads": args.threads,
        "eval_attn_implementation": attn_impl,
        "versions": versions(),
    }


def versions():
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for pkg in ["llmcompressor", "compressed-tensors", "transformers", "torch", "datasets",
                "tokenizers", "accelerate"]:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def run_all(args):
    results = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f).get("results", [])
    done = {(r["method"], r["sparsity"], r["mask_structure"] or "0:0") for r in results}
    for method, sp, mask in SETTINGS:
        if (method, sp, mask) in done:
            continue
        cmd = [sys.executable, __file__, "--model", args.model, "--text-dir", args.text_dir,
               "--method", method, "--sparsity", str(sp), "--mask", mask,
               "--threads", str(args.threads), "--eval-batch", str(args.eval_batch),
               "--block-size", str(args.block_size),
               "--dampening-frac", str(args.dampening_frac)]
        print(" ".join(cmd), file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"FAILED rc={proc.returncode}", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        results.append(row)
        with open(args.out, "w") as f:
            json.dump({"protocol": "docs/quality.md (wiki.utf8 64x512 eval, c4.utf8 32x512 calib)",
                       "model": "SmolLM2-135M f32 CPU",
                       "tool": "llm-compressor oneshot",
                       "notes": NOTES,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    a = parse_args()
    if a.all:
        run_all(a)
    else:
        print(json.dumps(one(a)), flush=True)
