"""Rate limits shared by two control-plane processes through Redis (and one PostgreSQL):
`bench/rate_limit_processes.py` in a short run. 20 calls/minute hammered for 12 s through
both processes: exactly 20 are admitted (the budget is neither exceeded nor lost between
processes), every other call is a 429, and the ledger holds one row per admitted call.
The full acceptance run (60/minute for 2 minutes) is the script's default."""

from __future__ import annotations

from bench.rate_limit_processes import run


def test_two_processes_share_one_budget(ray_cluster: None) -> None:
    result = run(calls=20, duration_s=12, workers=2)
    assert result["admitted"] == 20, result
    assert result["usage_rows"] == 20
    assert result["max_in_any_60s_window"] == 20
    assert result["rejected_429"] > 20  # it was hammered
    assert result["other_statuses"] == {}
