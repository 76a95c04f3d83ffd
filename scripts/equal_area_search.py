#!/usr/bin/env python3
"""Design search for AQPIM at AttAcc's PIM area per DRAM die.

Generates device files that extend hbm3-aqpim-5.2 with AQPIM's units shared
and sized differently (the same per-lane and per-KiB prices as that preset:
no figure is changed, only how many of each unit a die holds and how many
banks share it), keeps those whose PIM area per DRAM die is at most the
area of AttAcc's units (hbm3-attacc-5.2), and times each with
`aqpim simulate serve` (closed form first, the best ones simulated).
Prints one CSV row per design and the best.

    python3 scripts/equal_area_search.py --aqpim target/release/aqpim [--ctx 32K,64K] [--top 5]
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile

# Prices per lane or port, from hbm3-aqpim-5.2's derivation (Horowitz 45 nm
# arithmetic x 1.234 for the DRAM process x 1.365 for control, AttAcc 7.7).
FP32_ADD = 0.007047      # mm2 per FP32 adder (lookup port, histogram port)
FP32_MAC = 0.020025      # mm2 per FP32 multiply-accumulate lane (BINMAC)
DIST = 0.0121            # mm2 per distance lane (ARGMIN)
MAC8 = 0.0808            # mm2 per AttAcc GEMV unit (16 lanes at 666 MHz = 8 per tCK)


def device(lookup_banks, lookup_ports, hist_ports, binmac_banks, mac_banks, argmin_banks):
    return f'''extends = "hbm3-aqpim-5.2"
name = "search"
[units.mac]
banks_per_unit = {mac_banks}
ops_per_cycle = 8
area_mm2 = {MAC8}
process = "DRAM"
energy_pj = 0.32
source = "estimate: search variant"
[units.lookup]
banks_per_unit = {lookup_banks}
ops_per_cycle = {lookup_ports}
area_mm2 = {FP32_ADD * lookup_ports:.6f}
process = "DRAM"
energy_pj = 0.9
source = "estimate: search variant"
[units.histogram]
banks_per_unit = 1
ops_per_cycle = {hist_ports}
area_mm2 = {FP32_ADD * hist_ports:.6f}
process = "DRAM"
energy_pj = 11.1
source = "estimate: search variant"
[units.binmac]
banks_per_unit = {binmac_banks}
ops_per_cycle = 4
area_mm2 = {FP32_MAC * 4:.6f}
process = "DRAM"
energy_pj = 4.6
source = "estimate: search variant"
[units.argmin]
banks_per_unit = {argmin_banks}
ops_per_cycle = 8
area_mm2 = {DIST * 8:.6f}
process = "DRAM"
energy_pj = 2.4
source = "estimate: search variant"
[units.buffer]
banks_per_unit = {lookup_banks}
bytes = 32768
area_mm2_per_kib = 0.00316
process = "DRAM"
energy_pj_per_bit = 0.16
source = "estimate: search variant"
[units.registers]
bytes = 4608
area_mm2_per_kib = 0.0063
process = "DRAM"
energy_pj_per_bit = 0.16
source = "estimate: search variant"
'''


def serve(aqpim, system, policy, ctx, mode):
    out = subprocess.run(
        [aqpim, "simulate", "serve", "--model", "llama2-7b", "--system", system,
         "--policy", policy, "--ctx", ctx, "--pim-model", mode, "--json"],
        check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aqpim", default="target/release/aqpim")
    ap.add_argument("--ctx", default="32K,64K")
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    base = serve(a.aqpim, "h100+aqpim", "attacc", a.ctx, "simulated")
    attacc = {r["ctx"]: r["tokens_per_s"] for r in base}
    budget = base[0]["step"]["pim_area_mm2_per_die"]
    system = open(os.path.join(os.path.dirname(__file__), "..", "crates", "aqpim-system",
                               "presets", "systems", "h100+aqpim-equal-area.toml")).read()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        space = itertools.product([4, 16], [8, 16, 32, 48, 64], [2, 4, 6, 8], [1, 4], [4, 16], [16])
        for lb, lp, hp, bb, mb, ab in space:
            dev = os.path.join(tmp, "dev.toml")
            sys_file = os.path.join(tmp, "sys.toml")
            open(dev, "w").write(device(lb, lp, hp, bb, mb, ab))
            open(sys_file, "w").write(system.replace('device = "hbm3-aqpim-equal-area"', f'device = "{dev}"'))
            try:
                r = serve(a.aqpim, sys_file, "aqpim", a.ctx, "analytic")
            except subprocess.CalledProcessError as e:
                print(f"skip {lb},{lp},{hp},{bb},{mb}: {e.stderr.strip()[:120]}", file=sys.stderr)
                continue
            area = r[0]["step"]["pim_area_mm2_per_die"]
            if area > budget + 1e-9:
                continue
            ratios = [x["tokens_per_s"] / attacc[x["ctx"]] for x in r]
            rows.append((min(ratios), area, (lb, lp, hp, bb, mb, ab), ratios))
        rows.sort(reverse=True)
        print("lookup_banks,lookup_ports,hist_ports,binmac_banks,mac_banks,argmin_banks,area_mm2_per_die,"
              + ",".join(f"ratio_{c}_closed_form" for c in attacc) + "," + ",".join(f"ratio_{c}_simulated" for c in attacc))
        for i, (_, area, d, ratios) in enumerate(rows):
            sim = ""
            if i < a.top:
                open(dev, "w").write(device(*d))
                r = serve(a.aqpim, sys_file, "aqpim", a.ctx, "simulated")
                sim = ",".join(f"{x['tokens_per_s'] / attacc[x['ctx']]:.3f}" for x in r)
            print(",".join(map(str, d)) + f",{area:.3f}," + ",".join(f"{x:.3f}" for x in ratios) + "," + sim)
    print(f"# AttAcc's PIM area per die: {budget:.3f} mm2; attacc tokens/s {attacc}", file=sys.stderr)


if __name__ == "__main__":
    main()
