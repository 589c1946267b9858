"""Placement groups a failed run leaves behind, removed so that the retry (and every other run) can schedule.

Ray removes a placement group when both its creator (the run's train controller) and the job are gone, so
during a benchmark the group of a dead controller stays reserved. Ray Train's PlacementGroupCleaner removes
it only where the State API (the dashboard) answers, and not at all when the worker group died while its
training function was being launched (Ray 2.60 then keeps no handle on the group: seen in bench/chaos.py,
three such groups held every CPU of the cluster and the benchmark waited for ever). Two ways out:

- a run's workers report their group (``StatusBoard.set_placement_group``); when the run fails, the driver
  removes it at once (:func:`release`);
- :class:`IdleGroupReaper` removes this job's groups that are created but hold no actor or task for
  ``idle_s`` seconds: a live run's workers occupy their bundles within moments of the group's creation.
"""

from __future__ import annotations

import time

import ray
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from pipelines import faults


def _group(group_hex: str) -> PlacementGroup:
    from ray._raylet import PlacementGroupID

    return PlacementGroup(PlacementGroupID(bytes.fromhex(group_hex)))


def release(group_hex: str | None, why: str = "of a failed run") -> bool:
    """Removes the group unless Ray already did; True when this call removed it."""
    if not group_hex:
        return False
    group = _group(group_hex)
    try:
        if placement_group_table(group).get("state") in (None, "REMOVED"):
            return False
        remove_placement_group(group)
    except Exception as exc:  # gone in the meantime, or the GCS is busy: the reaper tries again
        print(f"could not remove placement group {group_hex}: {faults.describe(exc)}", flush=True)
        return False
    print(f"removed placement group {group_hex} {why}", flush=True)
    return True


class IdleGroupReaper:
    """Removes this job's placement groups that stayed created and unused for ``idle_s`` seconds."""

    def __init__(self, idle_s: float = 30.0) -> None:
        self.idle_s = idle_s
        self.job_hex = ray.get_runtime_context().get_job_id()
        self.idle_since: dict[str, float] = {}

    def idle_groups(self) -> list[str]:
        """This job's created groups whose bundles nothing occupies right now (a group id ends in its job id)."""
        available, total = ray.available_resources(), ray.cluster_resources()
        out = []
        for group_hex, info in placement_group_table().items():
            if info.get("state") != "CREATED" or not group_hex.endswith(self.job_hex):
                continue
            key = f"bundle_group_{group_hex}"
            if key in total and available.get(key, 0.0) >= total[key]:
                out.append(group_hex)
        return out

    def sweep(self, *, idle_s: float | None = None) -> list[str]:
        """Removes the groups idle for ``idle_s`` (default the reaper's); returns their ids."""
        limit = self.idle_s if idle_s is None else idle_s
        now = time.monotonic()
        try:
            idle = self.idle_groups()
        except Exception:  # the GCS is busy or restarting: next time
            return []
        self.idle_since = {g: self.idle_since.get(g, now) for g in idle}
        removed = [g for g, since in self.idle_since.items() if now - since >= limit and release(g, "left idle")]
        for group_hex in removed:
            self.idle_since.pop(group_hex, None)
        return removed
