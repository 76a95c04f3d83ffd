#!/usr/bin/env python3
"""llama.cpp as an outside peer for KV-cache quantization: perplexity of a GGUF
model with llama.cpp's own KV-cache types (f16, q8_0, q4_0), on the protocol of
`aqpim eval ppl`.

Protocol (the same as `aqpim eval ppl --window W --prefill P --tokens N`): the
text's first N tokens are cut into disjoint windows of W tokens; each window
runs on a fresh context after the `<|endoftext|>` start token (or BOS), its
first P inputs as one batch, every later token decoded one at a time through
the (quantized) cache; every text token is scored once. Prints one JSON object
with `perplexity`, `nll`, `scored_tokens` and the settings.

Not a workspace dependency (like scripts/faiss_pq_bench.py). llama-cpp-python
0.3.36 from PyPI; the default build crashed on its first evaluation on the
project's 2-core AVX-512 machine, one built with
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AMX_INT8=OFF
-DGGML_AMX_TILE=OFF -DGGML_OPENMP=OFF" works. A quantized V cache needs flash
attention, which this script turns on for every type (f16 included) so that
the rows differ only in the cache type.
"""
import argparse
import json
import math
import time

import numpy as np
from llama_cpp import Llama

# ggml_type ids (ggml.h): F16 = 1, Q4_0 = 2, Q8_0 = 8.
TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--kv", choices=sorted(TYPES), default="f16",
                    help="llama.cpp cache type for keys and values")
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    llm = Llama(
        model_path=a.model,
        n_ctx=a.window + 1,
        n_batch=max(a.prefill, 1),
        n_threads=a.threads,
        type_k=TYPES[a.kv],
        type_v=TYPES[a.kv],
        flash_attn=True,
        logits_all=True,
        verbose=False,
    )
    with open(a.text, encoding="utf-8") as f:
        body = f.read()
    ids = llm.tokenize(body.encode("utf-8"), add_bos=False, special=False)[: a.tokens]
    start = llm.tokenize(b"<|endoftext|>", add_bos=False, special=True)
    start = start[0] if len(start) == 1 else llm.token_bos()

    nll, scored, t0 = 0.0, 0, time.perf_counter()
    for begin in range(0, len(ids), a.window):
        seq = [start] + ids[begin : begin + a.window]
        inputs = seq[:-1]
        llm.reset()
        p = min(a.prefill, len(inputs))
        llm.eval(inputs[:p])
        for i in range(p, len(inputs)):
            llm.eval(inputs[i : i + 1])
        logits = np.asarray(llm.scores[: len(inputs)], dtype=np.float64)
        for i, row in enumerate(logits):
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll += lse - row[seq[i + 1]]
            scored += 1
    nll /= max(scored, 1)
    print(json.dumps({
        "kv": a.kv,
        "window": a.window,
        "prefill": a.prefill,
        "tokens": len(ids),
        "scored_tokens": scored,
        "nll": nll,
        "perplexity": math.exp(nll),
        "seconds": time.perf_counter() - t0,
    }))


if __name__ == "__main__":
    main()
