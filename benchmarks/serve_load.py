"""Load test of `prunekit serve` on loopback: throughput and latency with and without micro-batching.

Two servers run the same ONNX MLP (512 -> 4096 -> 4096 -> 10, about 19M weights, so that one row
at a time is bound by reading the weights and stacking rows pays): one with micro-batching, one
with `--no-batching`. Concurrent keep-alive connections (a minimal asyncio HTTP/1.1 client) send one-row predict requests to them in
interleaved rounds (A B A B ...), each round bounded in request count and time. Reported: the
median throughput of each variant, pooled p50/p99 latency, the throughput ratio (the median of the
per-round ratios, as each round measures both variants back to back), the mean rows per inference
call, and single-client latency (the price of waiting for a batch at low load).

    python benchmarks/serve_load.py            # a few minutes on 2 cores
    python benchmarks/serve_load.py --quick    # well under a minute

The last line is one JSON object: {"benchmark": "serve_load", "batching_throughput_ratio": ...,
"p50_ms": ..., "p99_ms": ..., "errors": ...} (p50/p99 of the batching server under load).
Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, INPUTS = 4096, 512


def build_model(model_dir: Path) -> None:
    """Export the benchmark MLP to ``model_dir/mlp/1/model.onnx`` with a dynamic batch axis."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(INPUTS, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, 10),
    ).eval()
    target = model_dir / "mlp" / "1"
    target.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, INPUTS),),
            str(target / "model.onnx"),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )


class Server:
    """A `prunekit serve` subprocess on 127.0.0.1 with a free port."""

    def __init__(self, model_dir: Path, *options: str) -> None:
        command = [
            sys.executable,
            "-m",
            "prunekit.cli",
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--poll-interval",
            "0",
            "--no-access-log",
            "--inference-threads",
            "2",
            "--intra-op-threads",
            "1",
            *options,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                if '"server ready"' in line:
                    self.url = json.loads(line)["url"]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or not self.url:
            self.stop()
            raise RuntimeError(f"server {options} did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> int:
    """One keep-alive HTTP/1.1 POST on an open connection; returns the status code.

    A minimal client (like wrk's) so that the load generator, which shares the CPUs with the
    server, costs little per request and the figures describe the server.
    """
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def load_round(url: str, bodies: list[bytes], concurrency: int, time_limit: float) -> tuple[float, list[float], int]:
    """Send every body once over ``concurrency`` keep-alive connections; stop early after
    ``time_limit`` seconds. Returns (requests per second, latencies in ms, errors).
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = (
        f"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: "
    ).encode()
    latencies: list[float] = []
    errors = 0
    next_index = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal next_index, errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while next_index < len(bodies) and time.perf_counter() - started < time_limit:
                body = bodies[next_index]
                next_index += 1
                sent = time.perf_counter()
                try:
                    ok = await asyncio.wait_for(_post(reader, writer, head, body), 30) == 200
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, StopIteration):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                latencies.append((time.perf_counter() - sent) * 1000)
                errors += not ok
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies, errors


def mean_batch_rows(url: str) -> float:
    """Rows per inference call so far, from the server's /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for key in ("prunekit_serve_batch_size_sum", "prunekit_serve_batch_size_count"):
            if line.startswith(key + "{"):
                values[key] = float(line.rsplit(" ", 1)[1])
    return values["prunekit_serve_batch_size_sum"] / max(values["prunekit_serve_batch_size_count"], 1)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    args = parser.parse_args()
    rounds, per_round, time_limit, single = (2, 200, 10.0, 30) if args.quick else (5, 600, 25.0, 100)

    rng = np.random.default_rng(0)
    bodies = [json.dumps({"instances": [rng.standard_normal(INPUTS).round(4).tolist()]}).encode() for _ in range(per_round)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        build_model(model_dir)
        variants = {
            "batching": Server(model_dir, "--max-batch-size", "32", "--batch-timeout-ms", "2"),
            "no batching": Server(model_dir, "--no-batching"),
        }
        try:
            throughput: dict[str, list[float]] = {name: [] for name in variants}
            latencies: dict[str, list[float]] = {name: [] for name in variants}
            single_latencies: dict[str, list[float]] = {name: [] for name in variants}
            errors = 0
            for server in variants.values():  # warm-up, not measured
                asyncio.run(load_round(server.url, bodies[:50], args.concurrency, time_limit))
            for round_index in range(rounds):  # interleaved: A B A B ...
                order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
                for name in order:
                    rps, lat, errs = asyncio.run(load_round(variants[name].url, bodies, args.concurrency, time_limit))
                    throughput[name].append(rps)
                    latencies[name].extend(lat)
                    errors += errs
                    print(
                        f"round {round_index + 1}/{rounds}  {name:<12} {rps:8.1f} req/s  "
                        f"p50 {percentile(lat, 50):7.2f} ms  p99 {percentile(lat, 99):7.2f} ms",
                        flush=True,
                    )
            for name in variants:  # one client: latency when there is nothing to batch with
                _, lat, errs = asyncio.run(load_round(variants[name].url, bodies[:single], 1, time_limit))
                single_latencies[name] = lat
                errors += errs
            rows_per_call = mean_batch_rows(variants["batching"].url)
        finally:
            for server in variants.values():
                server.stop()

    median = {name: statistics.median(values) for name, values in throughput.items()}
    # Each round measures both variants back to back, so their ratio cancels the machine's drift.
    ratio = statistics.median(b / n for b, n in zip(throughput["batching"], throughput["no batching"]))
    print()
    print(f"{'variant':<12} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8} {'1-client p50 ms':>16}")
    for name in variants:
        print(
            f"{name:<12} {median[name]:15.1f} {percentile(latencies[name], 50):8.2f} "
            f"{percentile(latencies[name], 99):8.2f} {percentile(single_latencies[name], 50):16.2f}"
        )
    print(
        f"batching throughput ratio: {ratio:.2f}x (median of the per-round ratios; ratio of medians "
        f"{median['batching'] / median['no batching']:.2f}x), mean rows per inference call with batching: "
        f"{rows_per_call:.1f}"
    )
    malloc = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))} or "glibc defaults"
    print(
        f"{args.concurrency} clients, {rounds} rounds x {per_round} requests per variant, {os.cpu_count()} CPUs, malloc: {malloc}"
    )
    print(
        json.dumps(
            {
                "benchmark": "serve_load",
                "batching_throughput_ratio": round(ratio, 3),
                "p50_ms": round(percentile(latencies["batching"], 50), 3),
                "p99_ms": round(percentile(latencies["batching"], 99), 3),
                "errors": errors,
                "batched_rps": round(median["batching"], 1),
                "unbatched_rps": round(median["no batching"], 1),
                "unbatched_p50_ms": round(percentile(latencies["no batching"], 50), 3),
                "unbatched_p99_ms": round(percentile(latencies["no batching"], 99), 3),
                "single_client_p50_ms": round(percentile(single_latencies["batching"], 50), 3),
                "single_client_unbatched_p50_ms": round(percentile(single_latencies["no batching"], 50), 3),
                "mean_batch_rows": round(rows_per_call, 2),
                "concurrency": args.concurrency,
                "rounds": rounds,
                "requests_per_round": per_round,
                "malloc": malloc,
            }
        )
    )


if __name__ == "__main__":
    main()
