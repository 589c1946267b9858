"""The reaper of placement groups a failed run left behind (pipelines/placement.py), on a faked cluster state."""

from __future__ import annotations

from types import SimpleNamespace

from pipelines import placement


def test_only_this_job_s_groups_left_idle_long_enough_are_removed(monkeypatch):
    job = "03000000"
    idle, busy, pending, foreign = (f"{c * 28}{job}" for c in "abcd")
    foreign = "d" * 28 + "04000000"
    table = {
        idle: {"state": "CREATED"},
        busy: {"state": "CREATED"},
        pending: {"state": "PENDING"},
        foreign: {"state": "CREATED"},
    }
    total = {f"bundle_group_{g}": 1000.0 for g in table}
    available = {**total, f"bundle_group_{busy}": 999.999}
    clock = [100.0]
    removed: list[str] = []
    monkeypatch.setattr(placement.ray, "get_runtime_context", lambda: SimpleNamespace(get_job_id=lambda: job))
    monkeypatch.setattr(placement, "placement_group_table", lambda group=None: table if group is None else {})
    monkeypatch.setattr(placement.ray, "available_resources", lambda: available)
    monkeypatch.setattr(placement.ray, "cluster_resources", lambda: total)
    monkeypatch.setattr(placement.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(placement, "release", lambda group, why="": removed.append(group) or True)

    reaper = placement.IdleGroupReaper(idle_s=30)
    assert reaper.idle_groups() == [idle]
    assert reaper.sweep() == []  # idle for 0 s
    clock[0] += 29
    assert reaper.sweep() == []
    available[f"bundle_group_{idle}"] = 999.999  # a worker took it after all: the clock starts again
    clock[0] += 5
    assert reaper.sweep() == []
    available[f"bundle_group_{idle}"] = 1000.0
    clock[0] += 1
    assert reaper.sweep() == []
    clock[0] += 30
    assert reaper.sweep() == [idle] and removed == [idle]
    assert reaper.sweep(idle_s=0.0) == [idle]  # the end-of-benchmark sweep takes what is idle now


def test_release_skips_groups_ray_already_removed(monkeypatch):
    calls = []
    monkeypatch.setattr(placement, "placement_group_table", lambda group: {"state": "REMOVED"})
    monkeypatch.setattr(placement, "remove_placement_group", calls.append)
    assert placement.release("ab" * 18) is False and calls == []
    assert placement.release(None) is False
    monkeypatch.setattr(placement, "placement_group_table", lambda group: {"state": "CREATED"})
    assert placement.release("ab" * 18) is True and len(calls) == 1
