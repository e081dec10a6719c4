"""The generate and bench command lines, run as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workers.model.checkpoint import save_checkpoint
from workers.model.loading import build_random
from workers.model.presets import preset


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_generate_greedy_json_reports_tokens_and_usage() -> None:
    done = _run(
        "-m",
        "workers.generate",
        "--preset",
        "dbrx-tiny",
        "--prompt-ids",
        "15339,1917",
        "--max-new-tokens",
        "5",
        "--greedy",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["usage"] == {"prompt_tokens": 2, "completion_tokens": len(report["token_ids"])}
    assert report["finish_reason"] in {"stop", "length"}
    again = _run(
        "-m",
        "workers.generate",
        "--preset",
        "dbrx-tiny",
        "--prompt-ids",
        "15339,1917",
        "--max-new-tokens",
        "5",
        "--greedy",
        "--json",
    )
    assert json.loads(again.stdout.strip().splitlines()[-1]) == report


def test_generate_from_checkpoint_with_chat_prompt(tmp_path: Path) -> None:
    args = preset("dbrx-tiny").args.replace(n_layers=1)
    save_checkpoint(build_random(args, seed=1), tmp_path)
    done = _run(
        "-m",
        "workers.generate",
        "--checkpoint",
        str(tmp_path),
        "--chat",
        "--prompt",
        "Hello there",
        "--max-new-tokens",
        "3",
        "--seed",
        "4",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["prompt_ids"][0] == 100278  # <|im_start|>
    assert isinstance(report["text"], str)


def test_generate_rejects_bad_prompt_ids_clearly() -> None:
    done = _run(
        "-m",
        "workers.generate",
        "--preset",
        "dbrx-tiny",
        "--prompt-ids",
        "1,x",
        "--max-new-tokens",
        "2",
    )
    assert done.returncode != 0
    assert "comma-separated integers" in done.stderr


@pytest.mark.parametrize("name", ["dbrx-instruct", "no-such-model"])
def test_generate_explains_presets_it_cannot_run(name: str) -> None:
    done = _run(
        "-m", "workers.generate", "--preset", name, "--prompt", "hi", "--max-new-tokens", "2"
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert (
        ("--checkpoint" in done.stderr) if name == "dbrx-instruct" else ("dbrx-tiny" in done.stderr)
    )


@pytest.mark.slow
def test_bench_json_last_line_has_the_documented_fields() -> None:
    done = _run(
        "-m",
        "workers.bench",
        "--preset",
        "dbrx-tiny",
        "--batch-size",
        "2",
        "--prompt-len",
        "8",
        "--gen-len",
        "4",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for field in (
        "output_tokens_per_s",
        "prefill_tokens_per_s",
        "decode_ms_per_step",
        "bandwidth_limit_tokens_per_s",
    ):
        assert report[field] > 0, field
    assert report["output_tokens_per_s"] < report["bandwidth_limit_tokens_per_s"] * 1.5


def test_engine_bench_reports_latency_baseline_and_prefix_gain() -> None:
    done = _run(
        "-m",
        "workers.bench",
        "--engine",
        "--preset",
        "dbrx-tiny",
        "--requests",
        "6",
        "--concurrency",
        "3",
        "--prompt-len",
        "8:24",
        "--gen-len",
        "2:6",
        "--shared-prefix",
        "32",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    engine = report["engine"]
    assert engine["output_tokens_per_s"] > 0 and engine["ttft_p50_ms"] <= engine["ttft_p99_ms"]
    assert report["requests_with_identical_tokens"] == 6  # same weights, same greedy tokens
    assert report["hf_static"]["output_tokens_per_s"] > 0
    assert report["prefix_cache"]["hit_rate"] > 0.2  # the first wave of 3 computes the prefix
    assert "| moeserve engine |" in done.stdout


def test_engine_bench_rejects_a_bad_length_range() -> None:
    done = _run(
        "-m",
        "workers.bench",
        "--engine",
        "--preset",
        "dbrx-tiny",
        "--prompt-len",
        "9:3",
        "--gen-len",
        "4",
    )
    assert done.returncode == 2 and "LOW:HIGH" in done.stderr
