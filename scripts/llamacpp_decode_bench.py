#!/usr/bin/env python3
"""Decode speed side by side: llama.cpp against `aqpim generate`, greedy,
same model, prompt and threads (issue 25, item 3).

The prompt is the first `--prompt-tokens` tokens of the text (by llama.cpp's
tokenizer, detokenized back to text and given to both programs; each
tokenizes it itself and the JSON reports both counts). Each run decodes
`--tokens` tokens greedily from a fresh context. The runs alternate
(llama.cpp, then aqpim, `--runs` times), so that a change in the load of a
shared machine weighs on both; the medians of the runs are the figures.

Decode tokens/s is counted the way `aqpim generate` counts it: the first
token comes out of the prefill, and the `tokens - 1` forward steps after it
are timed. llama.cpp runs in this process (llama-cpp-python, built as
scripts/llamacpp_kv_ppl.py says: the default build crashed on the project's
machine) with its f16 KV cache and flash attention off, its default; aqpim
runs as a subprocess with `--kv fp16 --json` (its startup and prefill are
outside the timed steps); `--aqpim-args` appends arguments to its command
line (`--aqpim-args "--activations f32"`). Prints one JSON object. Not a
workspace dependency (like scripts/faiss_pq_bench.py).

    python3 scripts/llamacpp_decode_bench.py --aqpim target/release/aqpim \\
        --model assets/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --text assets/austen/emma.txt --runs 5
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import time

import numpy as np
from llama_cpp import Llama


def next_token(llm):
    """Greedy pick from the logits of the last evaluated token (without
    logits_all, llama-cpp-python 0.3.36 keeps no scores of its own)."""
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def llama_run(llm, prompt_ids, tokens):
    """One greedy run on a fresh context: (decode tokens/s, generated ids)."""
    llm.reset()
    llm.eval(prompt_ids)
    out = [next_token(llm)]
    start = time.perf_counter()
    for _ in range(tokens - 1):
        llm.eval([out[-1]])
        out.append(next_token(llm))
    seconds = time.perf_counter() - start
    return (tokens - 1) / seconds, out


def aqpim_run(a, prompt):
    """One `aqpim generate` run: its JSON object."""
    cmd = [
        a.aqpim, "generate", "--model", a.model, "--prompt", prompt,
        "--max-tokens", str(a.tokens), "--kv", "fp16",
        "--threads", str(a.threads), "--json",
    ] + shlex.split(a.aqpim_args)
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def common_prefix(a, b):
    """Leading tokens two greedy runs share (the two programs round the
    same quantized weights differently, so long runs part at some token)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--aqpim", default="target/release/aqpim")
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=70)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--aqpim-args", default="",
                    help="more arguments for `aqpim generate`, one shell-quoted string")
    a = ap.parse_args()

    llm = Llama(
        model_path=a.model,
        n_ctx=a.prompt_tokens + a.tokens + 16,
        n_batch=512,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        verbose=False,
    )
    with open(a.text, encoding="utf-8") as f:
        body = f.read(1 << 16)
    ids = llm.tokenize(body.encode("utf-8"), add_bos=False, special=False)
    prompt = llm.detokenize(ids[: a.prompt_tokens]).decode("utf-8", "replace")
    prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)

    rows = []
    for run in range(a.runs):
        load = os.getloadavg()[0]
        tps, llama_ids = llama_run(llm, prompt_ids, a.tokens)
        rows.append({"run": run, "program": "llama.cpp", "decode_tokens_per_s": tps,
                     "tokens": len(llama_ids), "load_avg_1m": load})
        load = os.getloadavg()[0]
        out = aqpim_run(a, prompt)
        rows.append({"run": run, "program": "aqpim", "decode_tokens_per_s": out["decode_tokens_per_s"],
                     "tokens": len(out["tokens"]), "prompt_tokens": len(out["prompt_ids"]),
                     "prefix_equal_to_llama_cpp": common_prefix(out["tokens"], llama_ids),
                     "load_avg_1m": load})

    def median(program):
        return statistics.median(r["decode_tokens_per_s"] for r in rows if r["program"] == program)

    llama_tps, aqpim_tps = median("llama.cpp"), median("aqpim")
    print(json.dumps({
        "model": os.path.basename(a.model),
        "prompt_tokens_llama_cpp": len(prompt_ids),
        "tokens": a.tokens,
        "threads": a.threads,
        "runs": a.runs,
        "aqpim_args": a.aqpim_args,
        "llama_cpp_decode_tokens_per_s": llama_tps,
        "aqpim_decode_tokens_per_s": aqpim_tps,
        "aqpim_over_llama_cpp": aqpim_tps / llama_tps,
        "rows": rows,
    }))


if __name__ == "__main__":
    main()
