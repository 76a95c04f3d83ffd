#!/usr/bin/env python3
"""Estimate of AQPIM with some layers kept in FP16 (`fp16_layers=`), which
the system model does not price (it gives every layer one format).

Composed from two runs of `aqpim simulate --pim-model analytic` at each
batch: `aqpim` on a copy of the model with L - F layers, plus the attention
part (`total_ms - linear_ms`) of `attacc` on a copy with F layers (the FP16
layers as AttAcc's GEMV in the banks). A batch fits when both runs keep
every token in PIM and their PIM bytes fit the stacks together. Prints, per
context, AttAcc's and AQPIM's best batch (`simulate serve`, analytic) and
the composed design's. An estimate: the second run's fixed per-step costs
beside its attention, and the FP16 layers sharing AQPIM's device rather
than AttAcc's, are not modelled.

    python3 scripts/fp16_layer_estimate.py --aqpim target/release/aqpim [--fp16 1] [--model llama2-7b]
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
    out = subprocess.run([aqpim, *args, "--pim-model", "analytic", "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
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
    ap.add_argument("--fp16", type=int, default=1, help="layers kept in FP16")
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
                c = run(a.aqpim, ["simulate", "--model", coded, "--policy", "aqpim", *step])
                f = run(a.aqpim, ["simulate", "--model", fp16, "--policy", "attacc", *step])
                if c is None or f is None or c["ctx_spilled"] or f["ctx_spilled"]:
                    break
                if c["ctx_in_pim"] < ctx or f["ctx_in_pim"] < ctx:
                    break
                if c["pim_bytes_used"] + f["pim_bytes_used"] > c["pim_capacity_bytes"]:
                    break
                tok_s = 1000.0 * b / (c["total_ms"] + f["total_ms"] - f["linear_ms"])
                if best is None or tok_s > best[1]:
                    best = (b, tok_s)
            att, aq = serve["attacc"], serve["aqpim"]
            base = att["tokens_per_s"]
            mixed = (f"{best[1]:.0f},{best[0]},{best[1] / base:.2f}" if best else ",,")
            print(f"{ctx},{base:.0f},{att['best_batch']},{aq['tokens_per_s']:.0f},"
                  f"{aq['best_batch']},{aq['tokens_per_s'] / base:.2f},{mixed}", flush=True)


if __name__ == "__main__":
    main()
