"""Gateway overhead: the full HTTP query path against a direct Ray Serve handle call.

    .venv/bin/python -m bench.gateway_overhead [--requests 3000] [--concurrency 32] [--json]

Both paths reach the same Ray Serve application, whose replica runs the instant engine
(`workers.testing.instant`: no model compute), so what differs is exactly what the gateway
adds: HTTP parsing, auth, routing, tokenization, rate-limit checks, the usage row (group
commit to SQLite, durable before the response) and metrics.

Setup: a local Ray (started here), the control plane in its own process (as deployed:
uvicorn, SQLite, the Ray provider with the instant engine), one endpoint with a rate limit
high enough never to trigger (so the limiter runs) and one `dbrx-tiny` entity.

Measured in the same run, after a warm-up, interleaved so that this noisy machine's drift
hits both paths alike:
- latency: sequential non-streaming requests (one in flight), alternately through the
  handle (`handle.complete.remote(request)` from this driver) and through HTTP (`POST
  /serving-endpoints/{name}/invocations` over one keep-alive connection); p50 and p99 of
  each, and the ratio of the p50s;
- throughput: requests/s with `--concurrency` requests in flight, in alternating rounds
  (handle, HTTP, handle, ...); the median round of each path, and their ratio.
The HTTP client is a minimal asyncio HTTP/1.1 client so that the load generator takes as
little as possible of the machine's CPU from the server it measures.
Goals: HTTP p50 at most 1.5x the handle's, HTTP throughput at least 0.8x the handle's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from typing import Any

from bench.control_plane_process import create_endpoint, start_control_plane, stop
from control_plane.process_env import prefer_same_loop_routing

TOKEN = "dapi-bench-gateway"
ENDPOINT = "bench-overhead"
PROMPT = "What does a gateway add to the latency of a query?"
ROUNDS = 5  # throughput rounds per path, alternating


# -- a minimal HTTP/1.1 client ------------------------------------------------------------
class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes):
        self.reader, self.writer, self.request = reader, writer, request

    @classmethod
    async def open(cls, port: int, path: str, body: bytes) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return cls(reader, writer, head.encode() + body)

    async def post(self) -> bytes:
        self.writer.write(self.request)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        if b" 200 " not in status_line:
            raise RuntimeError(f"{status_line!r}: {payload[:300]!r}")
        return payload

    def close(self) -> None:
        self.writer.close()


# -- measurements -------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(call: Any, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return latencies


async def _concurrent(make_call: Any, count: int, concurrency: int) -> float:
    """Requests/s with `concurrency` workers, each issuing requests back to back."""
    remaining = count

    async def worker(call: Any) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    calls = [await make_call() for _ in range(concurrency)]
    started = time.perf_counter()
    await asyncio.gather(*(worker(call) for call in calls))
    return count / (time.perf_counter() - started)


async def measure(port: int, app_name: str, requests: int, concurrency: int) -> dict[str, Any]:
    from ray import serve

    from workers.engine.request import GenerationRequest
    from workers.tokenizer import load_tokenizer

    prompt_ids = load_tokenizer("cl100k_base").encode(PROMPT)
    handle = serve.get_app_handle(app_name)

    async def handle_call() -> None:
        request = GenerationRequest(prompt_token_ids=prompt_ids, max_tokens=4)
        await handle.complete.remote(request)

    body = json.dumps({"prompt": PROMPT, "max_tokens": 4}).encode()
    path = f"/serving-endpoints/{ENDPOINT}/invocations"

    async def http_caller() -> Any:
        connection = await Connection.open(port, path, body)
        return connection.post

    http_call = await http_caller()
    sequential = max(200, requests // 5)
    results: dict[str, Any] = {}
    await _sequential(handle_call, 50)  # warm-up
    await _sequential(http_call, 50)
    # Interleaved, one call of each path in turn, so drift of this noisy machine hits both.
    latencies: dict[str, list[float]] = {"handle": [], "http": []}
    for _ in range(sequential):
        for name, call in (("handle", handle_call), ("http", http_call)):
            latencies[name] += await _sequential(call, 1)
    for name, values in latencies.items():
        results[f"{name}_p50_ms"] = round(statistics.median(values) * 1000, 3)
        results[f"{name}_p99_ms"] = round(_percentile(values, 0.99) * 1000, 3)
    results["added_p50_ms"] = round(results["http_p50_ms"] - results["handle_p50_ms"], 3)
    results["p50_ratio"] = round(results["http_p50_ms"] / results["handle_p50_ms"], 2)

    async def make_handle_call() -> Any:
        return handle_call

    await _concurrent(make_handle_call, requests // 10, concurrency)  # warm-up
    await _concurrent(http_caller, requests // 10, concurrency)
    # Alternating rounds; each path's median round.
    rounds: dict[str, list[float]] = {"handle": [], "http": []}
    for _ in range(ROUNDS):
        rounds["handle"].append(await _concurrent(make_handle_call, requests, concurrency))
        rounds["http"].append(await _concurrent(http_caller, requests, concurrency))
    for name, values in rounds.items():
        results[f"{name}_requests_per_s"] = round(statistics.median(values), 1)
    results["throughput_ratio"] = round(
        results["http_requests_per_s"] / results["handle_requests_per_s"], 2
    )
    results.update(
        requests=requests, concurrency=concurrency, sequential_requests=sequential, rounds=ROUNDS
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per throughput run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="last line: the results as JSON")
    args = parser.parse_args(argv)
    prefer_same_loop_routing()  # the baseline's handle routes as the gateway's does

    import ray

    context = ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    address = context.address_info["gcs_address"]  # type: ignore[attr-defined]
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            print("starting the control plane ...", file=sys.stderr)
            server, base = start_control_plane(address, data_dir, token=TOKEN)
            try:
                print("creating the endpoint (instant replicas) ...", file=sys.stderr)
                limits = [{"calls": 1_000_000, "key": "endpoint", "renewal_period": "minute"}]
                endpoint = create_endpoint(
                    base, ENDPOINT, token=TOKEN, rate_limits=limits, task="llm/v1/completions"
                )
                app_name = _app_name(endpoint["id"])
                port = int(base.rsplit(":", 1)[1])
                print(f"measuring (app {app_name}) ...", file=sys.stderr)
                results = asyncio.run(measure(port, app_name, args.requests, args.concurrency))
            finally:
                stop(server)
    finally:
        ray.shutdown()
    _report(results)
    if args.json:
        print(json.dumps(results))
    return 0


def _app_name(endpoint_id: str) -> str:
    from ray import serve

    from control_plane.endpoints.capacity import endpoint_app_prefix

    prefix = endpoint_app_prefix(endpoint_id)
    names = [n for n in serve.status().applications if n.startswith(prefix)]
    if len(names) != 1:
        raise SystemExit(f"expected one Serve app for the endpoint, found {names}")
    return names[0]


def _report(r: dict[str, Any]) -> None:
    print(f"{'path':<8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    print(
        f"{'handle':<8}{r['handle_p50_ms']:>10}{r['handle_p99_ms']:>10}{r['handle_requests_per_s']:>10}"
    )
    print(f"{'http':<8}{r['http_p50_ms']:>10}{r['http_p99_ms']:>10}{r['http_requests_per_s']:>10}")
    print(
        f"added p50: {r['added_p50_ms']} ms; p50 ratio {r['p50_ratio']} (goal <= 1.5), "
        f"throughput ratio {r['throughput_ratio']} (goal >= 0.8)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
