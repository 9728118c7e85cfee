"""Real CPU speed from sparsity: prunekit's sparse kernels against the faster of PyTorch and ONNX Runtime.

Four measurements, each variant timed interleaved in the same run (``_timing.time_interleaved``,
minimum of per-round medians):

1. A 4096x4096 fp32 Linear at 80/90/95 % unstructured sparsity and 1/8/64 tokens, on 1 and 2
   threads: dense PyTorch, dense ONNX Runtime (a MatMul with the weight as initializer),
   prunekit's ``SparseLinear`` (numba CSR kernel), plus ``torch.sparse`` CSR and scipy CSR for
   the record. ``linear_speedup`` = faster dense / prunekit.
2. An MLP-heavy model (4 BERT-base-sized FFN blocks, 768 -> 3072 -> 768 with residual and
   LayerNorm), 90 % unstructured, batch 8, end to end: ``sparsify`` against the faster of
   PyTorch and ONNX Runtime on the dense model (``mlp_model_speedup_90``).
3. Batch-1 decoding (``generate``, greedy) of a LLaMA-shaped decoder (hidden 1536, MLP 4096,
   2 blocks, random weights) dense vs 50 % TEAL-style activation sparsity
   (``activation_sparsity_decode_speedup_50``), and the same on the trained small LM of the LLM
   issue (hidden 128: too small for any kernel to beat Python overhead; reported beside).
4. The small LM's validation perplexity dense vs 50 % activation sparsity
   (``activation_sparsity_ppl_increase_50``, relative), with the per-layer fractions allocated on
   the whole model's KL from the dense one and one output scale per layer (``allocation="kl"``
   with the default ``rescale=True``: 50 % of the weight elements' columns skipped, weighted by
   layer size, which for Linear layers is also the share of multiply-adds); the uniform
   allocation (50 % of every layer's inputs, also rescaled) is reported beside.
   ``scripts/activation_sparsity_search.py`` runs this part alone and compares allocations.

One-thread figures also come as the calling thread's CPU time (``*_cpu``): on a shared machine
the wall clock of a call of several milliseconds includes the time other processes held the core.

    python benchmarks/sparse_speed.py           # 1 and 2 threads, 5 rounds
    python benchmarks/sparse_speed.py --quick   # 2 rounds, fewer decode tokens
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _timing import Timing, malloc_settings, pin_malloc_settings, time_interleaved  # noqa: E402
from torch import nn  # noqa: E402

from prunekit.core.tables import ResultTable  # noqa: E402
from prunekit.torch.deploy.sparse import (  # noqa: E402
    HAVE_NUMBA,
    Layout,
    SparseLinear,
    activation_sparsity_report,
    apply_activation_sparsity,
    calibrate_activation_sparsity,
    set_threads,
    sparsify,
)

SIZE = 4096
SPARSITIES = (0.8, 0.9, 0.95)
TOKENS = (1, 8, 64)


def ort_session(weight_t: np.ndarray, threads: int, path: Path) -> object:
    """An ONNX Runtime session computing ``x @ weight_t`` (the dense baseline of one Linear)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", weight_t.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", weight_t.shape[1]])],
        [numpy_helper.from_array(weight_t, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return _session(path, threads, ort)


def _session(path: Path, threads: int, ort: object) -> object:
    options = ort.SessionOptions()  # type: ignore[attr-defined]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def bench_linear(threads: int, rounds: int, table: ResultTable, workdir: Path) -> dict[str, dict[str, float]]:
    """Speedups of prunekit's kernel over the faster dense runtime, per sparsity and token count."""
    import scipy.sparse

    set_threads(threads)
    result: dict[str, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(0)
    for sparsity in SPARSITIES:
        layer = nn.Linear(SIZE, SIZE, bias=False)
        with torch.no_grad():
            layer.weight[torch.rand(SIZE, SIZE, generator=generator) < sparsity] = 0.0
        weight = layer.weight.detach()
        sparse = SparseLinear.from_linear(layer, Layout("csr"))
        torch_csr = weight.to_sparse_csr()
        scipy_csr = scipy.sparse.csr_matrix(weight.numpy())
        session = ort_session(np.ascontiguousarray(weight.numpy().T), threads, workdir / f"linear_{sparsity}.onnx")
        result[str(sparsity)] = {}
        for tokens in TOKENS:
            x = torch.randn(tokens, SIZE, generator=generator)
            timings = _time_linear(x, layer, session, sparse, torch_csr, scipy_csr, rounds)
            ms = {name: t.best * 1e3 for name, t in timings.items()}
            dense = min(ms["torch dense"], ms["onnxruntime dense"])
            result[str(sparsity)][str(tokens)] = round(dense / ms["prunekit"], 3)
            table.add_row(
                threads,
                f"{sparsity:.2f}",
                tokens,
                *(f"{value:.3f}" for value in ms.values()),
                f"{dense / ms['prunekit']:.2f}x",
            )
    return result


def _time_linear(
    x: torch.Tensor, layer: nn.Module, session: object, sparse: nn.Module, torch_csr: torch.Tensor, scipy_csr: object, rounds: int
) -> dict[str, Timing]:
    """Every variant on one input, interleaved: torch, ONNX Runtime, prunekit, torch.sparse CSR, scipy CSR."""
    xn = x.numpy()
    xt = np.ascontiguousarray(xn.T)
    with torch.no_grad():
        variants = {
            "torch dense": lambda: layer(x),
            "onnxruntime dense": lambda: session.run(None, {"x": xn}),  # type: ignore[attr-defined]
            "prunekit": lambda: sparse(x),
            "torch.sparse csr": lambda: torch_csr @ x.T,
            "scipy csr": lambda: scipy_csr @ xt,  # type: ignore[operator]
        }
        return dict(time_interleaved(variants, rounds=rounds, repeats=5))


class FFNBlock(nn.Module):
    """A BERT-base feed-forward block: LayerNorm(x + W2 gelu(W1 x))."""

    def __init__(self, hidden: int = 768, inner: int = 3072) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, inner)
        self.down = nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))


def bench_mlp(threads: int, rounds: int, workdir: Path) -> tuple[float, float, str]:
    """End-to-end speedup of ``sparsify`` on a 90 % sparse MLP-heavy model at batch 8 (wall clock, and
    calling-thread CPU time, which is the whole compute on one thread only)."""
    import onnxruntime as ort

    from prunekit.torch import export_onnx

    set_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(*(FFNBlock() for _ in range(4))).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight[torch.rand_like(module.weight) < 0.9] = 0.0
    x = torch.randn(8, 768)
    fast, report = sparsify(model, x, repeats=10)
    export_onnx(model, x, workdir / "mlp.onnx", verify=False)
    session = _session(workdir / "mlp.onnx", threads, ort)
    feed = {session.get_inputs()[0].name: x.numpy()}  # type: ignore[attr-defined]
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)
        timings = time_interleaved(
            {"torch": lambda: model(x), "onnxruntime": lambda: session.run(None, feed), "sparse": lambda: fast(x)},  # type: ignore[attr-defined]
            rounds=rounds,
            repeats=10,
        )
    dense = min(timings["torch"].best, timings["onnxruntime"].best)
    dense_cpu = min(timings["torch"].cpu_best, timings["onnxruntime"].cpu_best)
    summary = (
        f"threads {threads}: torch {timings['torch'].best * 1e3:.2f} ms, onnxruntime {timings['onnxruntime'].best * 1e3:.2f} ms, "
        f"sparse {timings['sparse'].best * 1e3:.2f} ms (CPU time: torch {timings['torch'].cpu_best * 1e3:.2f}, "
        f"onnxruntime {timings['onnxruntime'].cpu_best * 1e3:.2f}, sparse {timings['sparse'].cpu_best * 1e3:.2f} ms); "
        f"layers sparse: {sum(c.sparse for c in report.layers)}/{len(report.layers)}"
    )
    return dense / timings["sparse"].best, dense_cpu / timings["sparse"].cpu_best, summary


def llama(hidden: int, inner: int, layers: int, vocab: int = 259) -> nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inner,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


def decode_speed(
    model: nn.Module, fast: nn.Module, prompt: torch.Tensor, new_tokens: int, rounds: int
) -> tuple[float, float, float]:
    """Tokens per second of greedy ``generate`` for the dense and the activation-sparse model, and the
    speedup in calling-thread CPU time (run on one thread)."""
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    def run(m: nn.Module) -> None:
        with torch.no_grad():
            m.generate(prompt, **settings)  # type: ignore[operator]

    timings = time_interleaved({"dense": lambda: run(model), "sparse": lambda: run(fast)}, rounds=rounds, repeats=1, warmup=1)
    cpu_speedup = timings["dense"].cpu_best / timings["sparse"].cpu_best
    return new_tokens / timings["dense"].best, new_tokens / timings["sparse"].best, cpu_speedup


def small_lm() -> tuple[nn.Module, str, str] | None:
    import transformers

    from prunekit.torch.llm.small_lm import MODEL_NAME, cache_dir

    path = cache_dir() / MODEL_NAME
    if not (path / "model.safetensors").is_file():
        return None
    model = transformers.AutoModelForCausalLM.from_pretrained(path).float().eval()
    return model, (path / "train.txt").read_text(encoding="utf-8"), (path / "valid.txt").read_text(encoding="utf-8")


def calibration_windows(train: str, tokenizer: object, count: int = 16, length: int = 128) -> torch.Tensor:
    """``count`` windows of ``length`` tokens at seeded random places in the training text (never the evaluation text)."""
    ids = torch.tensor(tokenizer(train[:2_000_000])["input_ids"])  # type: ignore[operator]
    starts = torch.randint(0, ids.numel() - length, (count,), generator=torch.Generator().manual_seed(0))
    return torch.stack([ids[int(start) : int(start) + length] for start in starts])


def bench_small_lm(
    model: nn.Module, train: str, valid: str, quick: bool, prompt: torch.Tensor, new_tokens: int, rounds: int
) -> dict[str, object]:
    """Perplexity of the small LM dense, at 50 % activation sparsity allocated on the joint KL with per-layer
    output scales (the figure) and uniformly (beside), both calibrated on its training text, and its decode
    speed with the KL thresholds."""
    from prunekit.torch.llm.evaluate import perplexity
    from prunekit.torch.llm.small_lm import byte_tokenizer

    tokenizer = byte_tokenizer()
    text = valid[: 40_000 if quick else 120_000]
    ids = calibration_windows(train, tokenizer)
    start = time.perf_counter()
    dense_ppl = perplexity(model, [text], tokenizer).perplexity
    ppl: dict[str, float] = {"dense": round(dense_ppl, 4)}
    fast: dict[str, nn.Module] = {}
    achieved: dict[str, float] = {}
    for allocation in ("kl", "uniform"):
        thresholds = calibrate_activation_sparsity(model, [ids[:8], ids[8:]], target=0.5, allocation=allocation)
        fast[allocation] = apply_activation_sparsity(model, thresholds)
        ppl[allocation] = round(perplexity(fast[allocation], [text], tokenizer).perplexity, 4)
        per_layer = activation_sparsity_report(fast[allocation])
        sizes = {name: model.get_submodule(name).weight.numel() for name in per_layer}
        achieved[allocation] = sum(per_layer[name] * sizes[name] for name in per_layer) / sum(sizes.values())
    dense_tps, sparse_tps, _ = decode_speed(model, fast["kl"], prompt, new_tokens, rounds)
    increase = {name: ppl[name] / dense_ppl - 1 for name in ("kl", "uniform")}
    print(
        f"small LM (128/384 x8): perplexity dense {dense_ppl:.3f}, 50 % activation-sparse kl {ppl['kl']:.3f} "
        f"(+{100 * increase['kl']:.2f} %, weighted achieved sparsity {achieved['kl']:.3f}), uniform "
        f"{ppl['uniform']:.3f} (+{100 * increase['uniform']:.2f} %, {achieved['uniform']:.3f}); decode dense "
        f"{dense_tps:.1f} tok/s vs sparse {sparse_tps:.1f} tok/s ({time.perf_counter() - start:.0f} s)"
    )
    return {
        "activation_sparsity_ppl_increase_50": round(increase["kl"], 4),
        "activation_sparsity_ppl_increase_50_uniform": round(increase["uniform"], 4),
        "small_lm_perplexity": ppl,
        "small_lm_weighted_activation_sparsity": {name: round(value, 3) for name, value in achieved.items()},
        "small_lm_decode_speedup_50": round(sparse_tps / dense_tps, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timing rounds and fewer decoded tokens")
    args = parser.parse_args()
    pin_malloc_settings()
    rounds = 2 if args.quick else 5
    new_tokens = 16 if args.quick else 32
    figures: dict[str, object] = {"benchmark": "sparse_speed", "kernel_backend": "numba" if HAVE_NUMBA else "torch"}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        table = ResultTable(
            f"{SIZE}x{SIZE} fp32 Linear, ms (best of per-round medians)",
            ["threads", "sparsity", "tokens", "torch", "onnxruntime", "prunekit", "torch.sparse csr", "scipy csr", "speedup"],
        )
        linear: dict[str, object] = {}
        for threads in (1, 2):
            linear[f"threads_{threads}"] = bench_linear(threads, rounds, table, workdir)
        from rich.console import Console

        table.print(Console(width=160))  # all columns, also when the output is not a terminal
        figures["linear_speedup"] = linear
        mlp_lines = []
        mlp: dict[str, float] = {}
        for threads in (1, 2):
            speedup, cpu_speedup, line = bench_mlp(threads, rounds, workdir)
            mlp[f"threads_{threads}"] = round(speedup, 3)
            if threads == 1:
                figures["mlp_model_speedup_90_cpu"] = round(cpu_speedup, 3)
            mlp_lines.append(line)
        print("\nMLP-heavy model (4 x FFN 768-3072-768, 90 % sparse, batch 8):\n  " + "\n  ".join(mlp_lines))
        figures["mlp_model_speedup_90"] = mlp["threads_1"]
        figures["mlp_model_speedup_90_by_threads"] = mlp

    set_threads(1)
    big = llama(1536, 4096, 2)
    calibration = [torch.randint(0, 259, (2, 64), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    thresholds = calibrate_activation_sparsity(big, calibration, target=0.5)
    big_fast = apply_activation_sparsity(big, thresholds)
    prompt = torch.randint(0, 259, (1, 16), generator=torch.Generator().manual_seed(9))
    dense_tps, sparse_tps, decode_cpu = decode_speed(big, big_fast, prompt, new_tokens, rounds)
    achieved = activation_sparsity_report(big_fast)
    print(
        f"\nbatch-1 decode, LLaMA-shaped 1536/4096 x2 (random weights), 1 thread: dense {dense_tps:.1f} tok/s, "
        f"50 % activation-sparse {sparse_tps:.1f} tok/s ({sparse_tps / dense_tps:.2f}x); "
        f"achieved activation sparsity {min(achieved.values()):.2f}-{max(achieved.values()):.2f} over {len(achieved)} layers"
    )
    figures["activation_sparsity_decode_speedup_50"] = round(sparse_tps / dense_tps, 3)
    figures["activation_sparsity_decode_speedup_50_cpu"] = round(decode_cpu, 3)
    figures["decode_tokens_per_s"] = {"dense": round(dense_tps, 2), "activation_sparse_50": round(sparse_tps, 2)}

    loaded = small_lm()
    if loaded is None:
        print("the small LM is not cached (python -c 'import prunekit.llm as l; l.ensure_small_lm()'): perplexity skipped")
        figures["activation_sparsity_ppl_increase_50"] = None
    else:
        figures.update(bench_small_lm(*loaded, args.quick, prompt, new_tokens, rounds))
    figures["malloc"] = malloc_settings()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
