"""The record of a `bench/gpu_bench.py` run: a JSON file rewritten after every step (so a run
cut short keeps what it measured), timestamped progress lines, and the final markdown table.
"""

from __future__ import annotations

import json
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from workers.model.args import ModelArgs
from workers.model.kernels import grouped_mm_supported
from workers.roofline import bandwidth_limit_tokens_per_s

GB = 1e9


class Report:
    def __init__(self, path: Path, device: torch.device | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.device = device
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {
            "status": "running",
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "errors": [],
            "moeserve": [],
            "hf": [],
        }
        self.save()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def log(self, message: str) -> None:
        clock = datetime.now().strftime("%H:%M:%S")
        print(f"[{clock} +{self.elapsed():6.1f}s] {message}", flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 2)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        partial.replace(self.path)  # atomic: a reader never sees half a file

    def error(self, step: str, exc: BaseException) -> None:
        self.data["errors"].append({"step": step, "error": f"{type(exc).__name__}: {exc}"})
        self.log(f"ERROR in {step}: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        self.save()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def attempt(self, step: str, run: Callable[[], Any], key: str) -> None:
        """Run one optional step; its result goes under `key`, a failure into `errors`."""
        self.log(f"{step}...")
        try:
            self.data[key] = run()
        except Exception as exc:  # one-shot run: record it and go on
            self.error(step, exc)
            return
        self.log(f"{step}: {self.data[key]}")
        self.save()

    def measure(
        self, implementation: str, batch: int, budget_s: float, run: Callable[[], dict[str, Any]]
    ) -> None:
        """One timed measurement, appended to `data[implementation]`; skipped past the budget."""
        step = f"{implementation} batch {batch}"
        if self.elapsed() > budget_s:
            skipped = f"skipped: {self.elapsed():.0f} s is past the {budget_s:.0f} s budget"
            self.data["errors"].append({"step": step, "error": skipped})
            self.log(f"{step}: {skipped}")
            self.save()
            return
        self.log(f"{step}: measuring...")
        cuda = self.device is not None and self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            result = run()
        except Exception as exc:  # e.g. out of memory at the largest batch: keep the rest
            self.error(step, exc)
            return
        if cuda:
            result["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / GB
        self.data[implementation].append(result)
        decode = result.get("decode_ms_per_step")
        per_step = f", decode {decode:.2f} ms/step" if decode else ""
        self.log(
            f"{step}: {result['output_tokens_per_s']:.1f} tok/s "
            f"({result['wall_s']:.3f} s wall{per_step})"
        )
        self.save()

    def fail(self, message: str) -> int:
        self.data.update(status="failed", error=message)
        self.save()
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2

    def finish(self) -> int:
        errors = self.data["errors"]
        self.data["status"] = "done with errors" if errors else "done"
        self.save()
        self.log(f"{self.data['status']}; results in {self.path}")
        return 1 if errors else 0

    def install_sigterm_handler(self) -> None:
        """`timeout` sends SIGTERM: say so in the JSON before exiting with timeout's 124."""

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.data["status"] = "killed by SIGTERM (the time limit?)"
            self.save()
            raise SystemExit(124)

        signal.signal(signal.SIGTERM, on_sigterm)


def environment(device: torch.device, dtype: torch.dtype, d_model: int) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception as exc:  # missing or broken: the run goes on without the HF baseline
        env["transformers"] = f"unavailable ({type(exc).__name__}: {exc})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gb=props.total_memory / GB,
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    else:
        env.update(cpu=platform.machine(), threads=torch.get_num_threads())
    probe = torch.empty(2, d_model, device=device, dtype=dtype)
    grouped = device.type == "cuda" and grouped_mm_supported(probe)
    env["moe_dispatch"] = "torch._grouped_mm" if grouped else "per-expert loop"
    return env


def table_rows(data: dict[str, Any], args: ModelArgs, element_size: int) -> list[dict[str, Any]]:
    """One row per batch size: both throughputs, their ratio, and the bandwidth ceiling."""
    config = data["config"]
    bandwidth = data.get("bandwidth", {}).get("used_gb_per_s", 0.0) * GB
    ours = {row["batch_size"]: row for row in data["moeserve"]}
    theirs = {row["batch_size"]: row for row in data["hf"]}
    rows = []
    for batch in config["batch_sizes"]:
        limit = None
        if bandwidth:
            limit = bandwidth_limit_tokens_per_s(
                args,
                batch_size=batch,
                context_len=config["prompt_len"] + config["gen_len"] // 2,
                bytes_per_element=element_size,
                bandwidth_bytes_per_s=bandwidth,
            )
        mine = ours.get(batch)
        tps = mine["output_tokens_per_s"] if mine else None
        decode = None
        if mine and mine["decode_ms_per_step"] > 0:
            decode = batch * 1000 / mine["decode_ms_per_step"]
        hf_tps = theirs[batch]["output_tokens_per_s"] if batch in theirs else None
        rows.append(
            {
                "batch_size": batch,
                "moeserve_tokens_per_s": tps,
                "hf_tokens_per_s": hf_tps,
                "ratio": tps / hf_tps if tps and hf_tps else None,
                "bandwidth_limit_tokens_per_s": limit,
                "percent_of_limit": 100 * tps / limit if tps and limit else None,
                "moeserve_decode_tokens_per_s": decode,
                "decode_percent_of_limit": 100 * decode / limit if decode and limit else None,
            }
        )
    return rows


def _cell(value: float | None, spec: str, unit: str = "") -> str:
    return "—" if value is None else format(value, spec) + unit


def _agreement(data: dict[str, Any]) -> str:
    found = data.get("agreement")
    if not found:
        return "not checked"
    return (
        f"{found['token_agreement']:.0%} of greedy tokens agree with HF "
        f"(first token {found['first_token_agreement']:.0%}), max logit difference "
        f"{found['max_abs_logit_diff_over_max_logit']:.1%} of the largest logit"
    )


def markdown_table(rows: list[dict[str, Any]], data: dict[str, Any]) -> str:
    env, config = data.get("environment", {}), data["config"]
    bandwidth = data.get("bandwidth", {})
    lines = [
        f"DBRX shape, {config['model_args']['n_layers']} layers "
        f"({config['parameters'] / 1e9:.2f} B params), {config['dtype']}, "
        f"on {env.get('gpu') or env.get('device')}, torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}; prompt {config['prompt_len']}, "
        f"{config['gen_len']} new tokens; MoE dispatch: {env.get('moe_dispatch')}",
        f"weights: {data.get('weights')}; {_agreement(data)}",
        f"bandwidth: {bandwidth.get('used_gb_per_s', 0):.0f} GB/s (matrix-vector "
        f"{bandwidth.get('matvec_gb_per_s', 0):.0f}, copy {bandwidth.get('copy_gb_per_s', 0):.0f})",
        "",
        "| batch | moeserve tok/s | HF tok/s | ratio | bandwidth limit tok/s | % of limit "
        "| moeserve decode tok/s | decode % of limit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['batch_size']} | {_cell(row['moeserve_tokens_per_s'], '.1f')} "
            f"| {_cell(row['hf_tokens_per_s'], '.1f')} | {_cell(row['ratio'], '.2f', 'x')} "
            f"| {_cell(row['bandwidth_limit_tokens_per_s'], '.0f')} "
            f"| {_cell(row['percent_of_limit'], '.0f', '%')} "
            f"| {_cell(row['moeserve_decode_tokens_per_s'], '.1f')} "
            f"| {_cell(row['decode_percent_of_limit'], '.0f', '%')} |"
        )
    if data["errors"]:
        lines += ["", "errors:"] + [f"- {e['step']}: {e['error']}" for e in data["errors"]]
    return "\n".join(lines)
