#!/usr/bin/env python3
"""faiss side of the PQ benchmark: the same measurements as `aqpim pq bench`.

Reads an n x d float32 .npy file, trains faiss.ProductQuantizer(d, M, nbits)
(25 k-means iterations, faiss's defaults otherwise), encodes, decodes and scans
inner-product ADC with faiss.IndexPQ, and prints one JSON object with the keys
of `aqpim pq bench --json`. Not a workspace dependency: run it beside the Rust
benchmark (see `cargo xtask faiss-compare`), after `pip install faiss-cpu numpy`.
"""
import argparse
import json
import time

import faiss
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--m", type=int, required=True)
    ap.add_argument("--nbits", type=int, default=8)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    faiss.omp_set_num_threads(a.threads)
    x = np.ascontiguousarray(np.load(a.input), dtype=np.float32)
    n, d = x.shape

    pq = faiss.ProductQuantizer(d, a.m, a.nbits)
    pq.cp.niter = a.iters
    t = time.perf_counter()
    pq.train(x)
    train_s = time.perf_counter() - t

    t = time.perf_counter()
    codes = pq.compute_codes(x)
    encode_s = time.perf_counter() - t
    rec = pq.decode(codes)
    se = float(((x.astype(np.float64) - rec) ** 2).sum())
    norms = float((x.astype(np.float64) ** 2).sum())

    index = faiss.IndexPQ(d, a.m, a.nbits, faiss.METRIC_INNER_PRODUCT)
    index.pq = pq
    index.is_trained = True
    index.add(x)
    q = x[:1]
    index.search(q, 1)  # warm-up
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < 0.3:
        index.search(q, 1)
        reps += 1
    adc = reps * n / (time.perf_counter() - t) / 1e6

    print(json.dumps({
        "impl": "faiss " + faiss.__version__,
        "n": n, "d": d, "m": a.m, "nbits": a.nbits, "iters": a.iters, "threads": a.threads,
        "train_s": train_s, "encode_s": encode_s, "adc_mcodes_per_s": adc,
        "mse_per_vector": se / n, "rel_mse": se / norms,
    }))


if __name__ == "__main__":
    main()
