#!/usr/bin/env python3
"""Estimate of AQPIM with some layers kept in FP16 (`fp16_layers=`) or
coded in a second format (`wide_layers=`), which the system model does not
price (it gives every layer one format).

Composed from three runs of `aqpim simulate --pim-model analytic` at each
batch: the GPU's linear layers of the whole model (`linear_ms` of `aqpim`
on the model itself), plus the rest of a step (`total_ms - linear_ms`:
attention, tables, link, sync) of `aqpim` on a copy of the model with
L - F layers and of the F special layers on a copy with F layers: as
AttAcc's GEMV in the banks (`attacc`, for FP16 layers) or as `aqpim` with
`--kv WIDE` (for wide layers). The rest of a step adds up layer by layer
(checked: at 32K, batch 4, the 31- and 1-layer copies' rests sum to the
whole model's to 1e-4 ms), while `linear_ms` holds the embedding and output
weights once per copy, hence the whole model's. A batch fits when both
copies keep every token in PIM and their PIM bytes fit the stacks
together. Prints, per context, AttAcc's and AQPIM's best batch (`simulate
serve`, analytic) and the composed design's. An estimate: the FP16 layers
sharing AQPIM's device rather than AttAcc's is not modelled.

    python3 scripts/fp16_layer_estimate.py --aqpim target/release/aqpim [--fp16 1] [--model llama2-7b]
    python3 scripts/fp16_layer_estimate.py --aqpim target/release/aqpim --fp16 1 \
        --wide-kv pq:kdsub=1,kbits=8,vdsub=2,vbits=8,sinks=4,window=128,outliers=5,vrefine=8
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

SYSTEM = "h100+aqpim"
CTXS = [4096, 8192, 16384, 32768, 65536, 131072]


def run(aqpim, args):
    """The run's JSON row, or None; a refused run's error goes to stderr
    (a batch too large to fit is the usual one and ends the search)."""
    out = subprocess.run([aqpim, *args, "--pim-model", "analytic", "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"aqpim {' '.join(args)}: {out.stderr.strip()}", file=sys.stderr)
        return None
    return json.loads(out.stdout.splitlines()[0])


def model_copy(aqpim, model, layers, directory):
    toml = subprocess.run([aqpim, "presets", "show", model], capture_output=True,
                          text=True, check=True).stdout
    toml = re.sub(r"(?m)^layers = \d+$", f"layers = {layers}", toml)
    toml = re.sub(r'(?m)^name = "([^"]*)"$', rf'name = "\1-{layers}layers"', toml)
    path = os.path.join(directory, f"{model}-{layers}.toml")
    with open(path, "w") as f:
        f.write(toml)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aqpim", required=True, help="the aqpim binary")
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--fp16", type=int, default=1,
                    help="layers kept in FP16 (or coded as --wide-kv says)")
    ap.add_argument("--wide-kv", help="code those layers in this pq: spec instead of FP16")
    a = ap.parse_args()
    toml = subprocess.run([a.aqpim, "presets", "show", a.model], capture_output=True,
                          text=True, check=True).stdout
    layers = int(re.search(r"(?m)^layers = (\d+)$", toml).group(1))
    if not 0 < a.fp16 < layers:
        sys.exit(f"--fp16 {a.fp16}: the model has {layers} layers")
    with tempfile.TemporaryDirectory() as d:
        coded = model_copy(a.aqpim, a.model, layers - a.fp16, d)
        fp16 = model_copy(a.aqpim, a.model, a.fp16, d)
        print("ctx,attacc_tok_s,attacc_batch,aqpim_tok_s,aqpim_batch,aqpim_x,"
              "mixed_tok_s,mixed_batch,mixed_x")
        for ctx in CTXS:
            serve = {p: run(a.aqpim, ["simulate", "serve", "--model", a.model, "--system",
                                      SYSTEM, "--policy", p, "--ctx", str(ctx)])
                     for p in ("attacc", "aqpim")}
            best = None
            for b in range(1, serve["aqpim"]["max_batch_in_pim"] + 1):
                step = ["--system", SYSTEM, "--ctx", str(ctx), "--batch", str(b)]
                whole = run(a.aqpim, ["simulate", "--model", a.model, "--policy", "aqpim", *step])
                c = run(a.aqpim, ["simulate", "--model", coded, "--policy", "aqpim", *step])
                special = (["--policy", "aqpim", "--kv", a.wide_kv] if a.wide_kv
                           else ["--policy", "attacc"])
                f = run(a.aqpim, ["simulate", "--model", fp16, *special, *step])
                if whole is None or c is None or f is None or c["ctx_spilled"] or f["ctx_spilled"]:
                    break
                if c["ctx_in_pim"] < ctx or f["ctx_in_pim"] < ctx:
                    break
                if c["pim_bytes_used"] + f["pim_bytes_used"] > c["pim_capacity_bytes"]:
                    break
                rest = (c["total_ms"] - c["linear_ms"]) + (f["total_ms"] - f["linear_ms"])
                tok_s = 1000.0 * b / (whole["linear_ms"] + rest)
                if best is None or tok_s > best[1]:
                    best = (b, tok_s)
            att, aq = serve["attacc"], serve["aqpim"]
            base = att["tokens_per_s"]
            mixed = (f"{best[1]:.0f},{best[0]},{best[1] / base:.2f}" if best else ",,")
            print(f"{ctx},{base:.0f},{att['best_batch']},{aq['tokens_per_s']:.0f},"
                  f"{aq['best_batch']},{aq['tokens_per_s'] / base:.2f},{mixed}", flush=True)


if __name__ == "__main__":
    main()
