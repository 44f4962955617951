"""The state store: exact save/restore, LRU order, budgets, spill/promote, pins, files across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tnllm.engine.states import StateBudgets, StateStore, model_fingerprint

SHAPES = [(4, 16, 16), (4, 8, 16)]  # two layers of odd sizes
ENTRY = sum(4 * a * b * c for a, b, c in SHAPES)  # bytes of one fp32 state


def pool(slots: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((slots, *s), generator=g) for s in SHAPES]


def store(
    device: int, host: int = 0, disk: int = 0, directory: Path | None = None, fp: str = "m1"
) -> StateStore:
    return StateStore(
        fp, device=torch.device("cpu"), dtype=torch.float32,
        budgets=StateBudgets(device=device, host=host, disk=disk), directory=directory,
    )  # fmt: skip


def slot(p: list[torch.Tensor], i: int) -> list[torch.Tensor]:
    return [layer[i] for layer in p]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_save_restore_is_bit_exact_in_every_tier(tmp_path: Path) -> None:
    p = pool()
    s = store(device=ENTRY, host=ENTRY, disk=10 * ENTRY, directory=tmp_path)
    keys = [s.put([1, 2, i], slot(p, i)) for i in range(3)]  # 3 entries: device, host, disk
    assert [s.tier_of(k) for k in keys] == ["disk", "host", "device"]
    p[0].fill_(float("nan"))  # the saved copies must not alias the pool
    p[1].fill_(float("nan"))
    want = pool()
    for i, key in enumerate(keys):
        assert s.restore(key, p, 3)
        assert same(slot(p, 3), slot(want, i)), f"state {i} differs after restore"


def test_lru_order_and_budgets() -> None:
    p = pool()
    s = store(device=2 * ENTRY, host=ENTRY)
    a, b = s.put([1], slot(p, 0)), s.put([2], slot(p, 1))
    assert s.get(a) is not None  # a is now the most recent
    c = s.put([3], slot(p, 2))
    assert (s.tier_of(a), s.tier_of(b), s.tier_of(c)) == ("device", "host", "device")
    d = s.put([4], slot(p, 3))  # a spills to host, pushing b out of the last tier
    assert (s.tier_of(a), s.tier_of(b), s.tier_of(d)) == ("host", None, "device")
    st = s.stats()
    assert st["device"]["bytes"] == 2 * ENTRY <= s.budgets.device
    assert st["host"]["bytes"] == ENTRY and st["device"]["evictions"] == 2 and st["host"]["evictions"] == 1


def test_hit_promotes_to_device_and_counts_per_tier() -> None:
    p = pool()
    s = store(device=ENTRY, host=2 * ENTRY)
    a = s.put([1, 2], slot(p, 0))
    s.put([3], slot(p, 1))
    assert s.tier_of(a) == "host"
    assert s.lookup([1, 2, 9]) == (2, a)
    state = s.get(a)
    assert state is not None and same(state, slot(pool(), 0)) and state[0].device.type == "cpu"
    assert s.tier_of(a) == "device"
    st = s.stats()
    assert st["host"]["hits"] == 1 and st["device"]["misses"] == 1 and st["device"]["hits"] == 0


def test_lookup_finds_the_longest_prefix_at_any_token() -> None:
    p = pool()
    s = store(device=10 * ENTRY)
    ids = list(range(100, 140))
    k5, k17 = s.put(ids[:5], slot(p, 0)), s.put(ids[:17], slot(p, 1))
    s.put([7, 8, 9], slot(p, 2))
    assert s.lookup(ids) == (17, k17)
    assert s.lookup(ids, max_len=16) == (5, k5)
    assert s.lookup([*ids[:10], 1, 2, 3]) == (5, k5)  # diverges inside the 17-token entry
    assert s.lookup(ids[:4]) is None and s.lookup([1, *ids]) is None
    assert s.lookups == 5 and s.lookup_misses == 2


def test_pinned_entries_survive_pressure_and_unpin_releases_them() -> None:
    p = pool()
    s = store(device=2 * ENTRY)
    pinned = s.put([1], slot(p, 0), pin="prefix-1")
    for i in range(10):
        s.put([50 + i], slot(p, i % 4))
    assert s.tier_of(pinned) == "device" and s.pinned("prefix-1") == [pinned]
    assert s.unpin("prefix-1") == 1
    s.put([99], slot(p, 1))
    s.put([98], slot(p, 2))
    assert s.tier_of(pinned) is None  # an LRU entry again, pushed out


def test_file_tier_survives_a_restart_and_trusts_only_its_own_model(tmp_path: Path) -> None:
    p = pool()
    first = store(device=ENTRY, disk=10 * ENTRY, directory=tmp_path)
    ids = [5, 6, 7, 8]
    key = first.put(ids, slot(p, 0))
    first.put([1], slot(p, 1))  # pushes ids's state to disk
    assert first.tier_of(key) == "disk"
    again = store(device=ENTRY, disk=10 * ENTRY, directory=tmp_path)
    assert again.lookup([*ids, 9]) == (4, key)
    out = pool(seed=1)
    assert again.restore(key, out, 2) and same(slot(out, 2), slot(pool(), 0))
    other = store(device=ENTRY, disk=10 * ENTRY, directory=tmp_path, fp="m2")
    assert len(other) == 0 and other.lookup([*ids, 9]) is None


def test_a_file_whose_ids_do_not_match_its_name_is_ignored(tmp_path: Path) -> None:
    p = pool()
    first = store(device=0, disk=10 * ENTRY, directory=tmp_path)
    key = first.put([5, 6], slot(p, 0))
    files = first.files
    assert files is not None and first.tier_of(key) == "disk"
    files.save(key, (5, 7), slot(p, 1))  # another text's state under this name
    assert len(store(device=0, disk=10 * ENTRY, directory=tmp_path)) == 0


def test_model_fingerprint_depends_on_weights(engine_model: Any) -> None:
    a = model_fingerprint(engine_model, torch.float32)
    assert a == model_fingerprint(engine_model, torch.float32)
    assert a != model_fingerprint(engine_model, torch.bfloat16)
    param = next(engine_model.parameters())
    before = param.detach().view(-1)[0].clone()
    with torch.no_grad():
        param.view(-1)[0] += 1.0
        try:
            assert model_fingerprint(engine_model, torch.float32) != a
        finally:
            param.view(-1)[0] = before  # the session's shared model, exactly as it was


@pytest.mark.parametrize("budget", [0, ENTRY - 1])
def test_a_state_larger_than_every_budget_is_not_kept(budget: int) -> None:
    s = store(device=budget, host=budget)
    key = s.put([1], slot(pool(), 0))
    assert key not in s and s.stats()["device"]["bytes"] == 0
