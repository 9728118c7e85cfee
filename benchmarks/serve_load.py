"""Load test of `prunekit serve` on loopback: micro-batching, drift monitoring, and faults under load.

Two servers run the same ONNX MLP (512 -> 4096 -> 4096 -> 10, about 19M weights, so that one row
at a time is bound by reading the weights and stacking rows pays): one with micro-batching, one
with `--no-batching`. Concurrent keep-alive connections (a minimal asyncio HTTP/1.1 client) send one-row predict requests to them in
interleaved rounds (A B A B ...), each round bounded in request count and time. Reported: the
median throughput of each variant, pooled p50/p99 latency, the throughput ratio (the median of the
per-round ratios, as each round measures both variants back to back), the mean rows per inference
call, and single-client latency (the price of waiting for a batch at low load).

A third server is the batching one with drift monitoring on (the model has a reference profile):
``monitoring_overhead`` is throughput without monitoring / with it (median of per-round ratios).
One request in 20 is malformed (bad JSON, a wrong shape, NaN, a wrong dtype); ``errors`` counts
answers other than the expected one (200, or 400 for a malformed body) and requests left without one.

The fault run then serves the model with a short queue (``--max-queued-requests 4``) under 64
clients while a broken version 2 is dropped into the model directory: ``lost_requests`` counts
requests without an answer or with an answer other than 200, a JSON 4xx, or 503 with Retry-After.

    python benchmarks/serve_load.py            # a few minutes on 2 cores
    python benchmarks/serve_load.py --quick    # well under a minute

The last line is one JSON object: {"benchmark": "serve_load", "batching_throughput_ratio": ...,
"p50_ms": ..., "p99_ms": ..., "errors": ..., "monitoring_overhead": ..., "lost_requests": ...}
(p50/p99 of the batching server under load).
Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
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
    """Export the benchmark MLP to ``model_dir/mlp/1/model.onnx`` with a dynamic batch axis, and its
    reference profile (1,000 standard normal rows, the distribution the load sends) beside it."""
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
    from prunekit.serve.profiling import profile_artifact

    reference = np.random.default_rng(1).standard_normal((1000, INPUTS)).astype(np.float32)
    profile_artifact(target / "model.onnx", reference, out=target / "profile.json")


MALFORMED = [
    b'{"instances": [[1, 2',  # truncated JSON
    json.dumps({"instances": [[0.5] * (INPUTS - 1)]}).encode(),  # wrong shape
    b'{"instances": [[NaN' + b", 0" * (INPUTS - 1) + b"]]}",  # NaN
    json.dumps({"instances": [["x"] * INPUTS]}).encode(),  # wrong dtype
    json.dumps({"inputs": {"nope": [[0.0] * INPUTS]}}).encode(),  # unknown input name
]


def request_bodies(count: int, seed: int = 0) -> list[tuple[bytes, int]]:
    """``count`` one-row predict bodies with their expected status; every 20th is malformed (400)."""
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(count):
        if i % 20 == 19:
            bodies.append((MALFORMED[(i // 20) % len(MALFORMED)], 400))
        else:
            bodies.append((json.dumps({"instances": [rng.standard_normal(INPUTS).round(4).tolist()]}).encode(), 200))
    return bodies


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


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> tuple[int, bool]:
    """One keep-alive HTTP/1.1 POST on an open connection; returns the status code and whether the
    answer is well formed (a JSON body; a Retry-After header on a 503).

    A minimal client (like wrk's) so that the load generator, which shares the CPUs with the
    server, costs little per request and the figures describe the server.
    """
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    lines = [line.lower() for line in header.split(b"\r\n")]
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
    payload = await reader.readexactly(length)
    well_formed = payload.startswith(b"{") and (status != 503 or any(line.startswith(b"retry-after:") for line in lines))
    return status, well_formed


async def load_round(
    url: str, bodies: list[tuple[bytes, int]], concurrency: int, time_limit: float, statuses: dict[int, int] | None = None
) -> tuple[float, list[float], int]:
    """Send every body once over ``concurrency`` keep-alive connections; stop early after
    ``time_limit`` seconds. Returns (requests per second, latencies in ms, errors): an error is an
    answer other than the body's expected status, or none. ``statuses`` counts the answers by status
    (-1: no answer, 0: an answer that is not well formed).
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
                body, expected = bodies[next_index]
                next_index += 1
                sent = time.perf_counter()
                try:
                    status, well_formed = await asyncio.wait_for(_post(reader, writer, head, body), 30)
                    ok = status == expected and well_formed
                    status = status if well_formed else 0
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, StopIteration):
                    status, ok = -1, False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                if statuses is not None:
                    statuses[status] = statuses.get(status, 0) + 1
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


async def _with_broken_version(url: str, bodies: list[tuple[bytes, int]], concurrency: int, broken: Path) -> dict[int, int]:
    """Run one load round; half a second in, write a corrupt model as a new version (reloaded under load)."""

    async def break_model() -> None:
        await asyncio.sleep(0.5)
        broken.parent.mkdir(parents=True)
        broken.write_bytes(b"not an ONNX model: the reload must fail and version 1 keep serving")

    statuses: dict[int, int] = {}
    task = asyncio.create_task(break_model())
    await load_round(url, bodies, concurrency, 120.0, statuses)
    await task
    return statuses


def fault_run(model_dir: Path, requests: int, concurrency: int = 64) -> dict[str, object]:
    """A short queue under many clients while a broken version arrives; every request must get an answer."""
    import httpx

    server = Server(model_dir, "--no-drift", "--max-queued-requests", "4", "--max-batch-size", "8", "--poll-interval", "0.2")
    try:
        statuses = asyncio.run(
            _with_broken_version(
                server.url, request_bodies(requests, seed=7), concurrency, model_dir / "mlp" / "2" / "model.onnx"
            )
        )
        time.sleep(1.0)  # two scans: the broken version is seen settled and refused
        versions = {v["version"]: v for v in httpx.get(server.url + "/v1/models/mlp", timeout=10).json()["model_version_status"]}
        after = httpx.post(server.url + "/v1/models/mlp:predict", content=request_bodies(1)[0][0], timeout=30)
    finally:
        server.stop()
    lost = sum(n for status, n in statuses.items() if not (status == 200 or 400 <= status < 500 or status == 503))
    return {
        "lost_requests": lost,
        "fault_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "broken_version_refused": versions.get("2", {}).get("state") == "END" and bool(versions["2"]["status"]["error_message"]),
        "served_after_fault": after.status_code == 200 and after.headers.get("x-model-version") == "1",
    }


def monitor_cost(model_dir: Path, requests: int = 3000) -> dict[str, float]:
    """In process, interleaved: the drift monitor's time per one-row request (binning, flushes and
    threshold checks included) against one inference call on the same row; medians of 5 rounds."""
    from prunekit.artifacts.profile import ReferenceProfile
    from prunekit.serve.config import DriftSettings
    from prunekit.serve.drift import DriftMonitor
    from prunekit.serve.runtimes import load_runtime

    runtime = load_runtime(model_dir / "mlp" / "1" / "model.onnx")
    profile = ReferenceProfile.load(model_dir / "mlp" / "1" / "profile.json")
    rows = np.random.default_rng(2).standard_normal((requests, 1, INPUTS)).astype(np.float32)
    outputs = [runtime.run({"x": row}) for row in rows[:50]]  # reused: 50 distinct outputs do shift the classes
    logging.getLogger("prunekit.serve.drift").disabled = True  # ... so the warnings it logs are not the point here
    monitor_us, inference_us = [], []
    for _ in range(5):
        monitor = DriftMonitor(profile, runtime.inputs, runtime.outputs, DriftSettings(), "mlp", 1)
        started = time.perf_counter()
        for i, row in enumerate(rows):
            monitor.observe({"x": row}, outputs[i % 50], f"r{i}")
        monitor.report()
        monitor_us.append((time.perf_counter() - started) / requests * 1e6)
        started = time.perf_counter()
        for row in rows[:100]:
            runtime.run({"x": row})
        inference_us.append((time.perf_counter() - started) / 100 * 1e6)
    return {"monitor_us_per_request": statistics.median(monitor_us), "inference_us_per_request": statistics.median(inference_us)}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    args = parser.parse_args()
    rounds, per_round, time_limit, single = (2, 200, 10.0, 30) if args.quick else (5, 600, 25.0, 100)

    bodies = request_bodies(per_round)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        build_model(model_dir)
        batching = ("--max-batch-size", "32", "--batch-timeout-ms", "2")
        variants = {
            "batching": Server(model_dir, *batching, "--no-drift"),
            "no batching": Server(model_dir, "--no-batching", "--no-drift"),
            "batch+drift": Server(model_dir, *batching),
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
            drift = __import__("httpx").get(variants["batch+drift"].url + "/v1/models/mlp/drift", timeout=10).json()
        finally:
            for server in variants.values():
                server.stop()
        cost = monitor_cost(model_dir, 1000 if args.quick else 3000)
        fault_dir = Path(tmp) / "fault"
        shutil.copytree(model_dir, fault_dir)
        faults = fault_run(fault_dir, per_round * 2)

    median = {name: statistics.median(values) for name, values in throughput.items()}
    # Each round measures both variants back to back, so their ratio cancels the machine's drift.
    ratio = statistics.median(b / n for b, n in zip(throughput["batching"], throughput["no batching"]))
    overhead = statistics.median(b / d for b, d in zip(throughput["batching"], throughput["batch+drift"]))
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
    print(
        f"drift monitoring overhead: {overhead:.3f}x (batching throughput without / with monitoring; goal <= 1.05); "
        f"window {drift['window_rows']} rows, max PSI {drift['inputs']['x']['max_psi']:.3f}, alerts {len(drift['alerts'])}"
    )
    print(
        f"drift monitor in process: {cost['monitor_us_per_request']:.1f} us per one-row request vs "
        f"{cost['inference_us_per_request']:.1f} us for its inference call "
        f"({cost['monitor_us_per_request'] / cost['inference_us_per_request']:.2%})"
    )
    print(
        f"fault run (queue of 4, 64 clients, broken version 2 during load): answers by status {faults['fault_statuses']}, "
        f"lost {faults['lost_requests']}, broken version refused: {faults['broken_version_refused']}, "
        f"version 1 served after: {faults['served_after_fault']}"
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
                "monitoring_overhead": round(overhead, 3),
                "monitored_rps": round(median["batch+drift"], 1),
                "monitoring_overhead_per_round": [
                    round(b / d, 3) for b, d in zip(throughput["batching"], throughput["batch+drift"])
                ],
                "monitor_us_per_request": round(cost["monitor_us_per_request"], 2),
                "monitor_cost_over_inference": round(cost["monitor_us_per_request"] / cost["inference_us_per_request"], 4),
                "drift_alerts_on_reference_load": len(drift["alerts"]),
                **faults,
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
