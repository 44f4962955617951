"""A sequence's tokens never depend on the other sequences sharing its decode batch.

docs/MODEL_SPEC.md §7.1.
"""

from __future__ import annotations

import torch

NEW_TOKENS = 12
LENGTHS = [1, 3, 7, 12, 30, 64, 257, 5]  # one prompt crosses the 256-token prefill block
SLOTS = [9, 2, 5, 0, 11, 7, 3, 6]  # scattered over a 12-slot pool; 1, 4, 8, 10 stay unused


def _prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in LENGTHS]


def _alone(model, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:  # type: ignore[no-untyped-def]
    pool = model.new_state_pool(1)
    logits = model.prefill(torch.tensor(prompt), 0, pool, 0)
    ids, seen = [], [logits]
    for step in range(NEW_TOKENS):
        ids.append(int(logits.argmax()))
        if step + 1 < NEW_TOKENS:
            logits = model.decode(
                torch.tensor(ids[-1:]), torch.tensor([len(prompt) + step]), pool, torch.tensor([0])
            )[0]
            seen.append(logits)
    return ids, seen


def _together(model, prompts: list[list[int]]) -> tuple[list[list[int]], list[list[torch.Tensor]], list]:  # type: ignore[no-untyped-def]
    """Continuous batching by hand: two prompts arrive per step, the decode batch is ragged."""
    pool = model.new_state_pool(12)
    for layer in pool:
        layer.fill_(float("nan"))
    ids: list[list[int]] = [[] for _ in prompts]
    seen: list[list[torch.Tensor]] = [[] for _ in prompts]
    last: dict[int, torch.Tensor] = {}
    step = 0
    while any(len(x) < NEW_TOKENS for x in ids):
        for i in range(2 * step, min(2 * step + 2, len(prompts))):  # arrivals: prefill, then join the batch
            model.reset_slot(pool, SLOTS[i])
            last[i] = model.prefill(torch.tensor(prompts[i]), 0, pool, SLOTS[i])
            seen[i].append(last[i])
        for i, logits in last.items():
            ids[i].append(int(logits.argmax()))
        active = [i for i in last if len(ids[i]) < NEW_TOKENS]
        for i in list(last):
            if len(ids[i]) >= NEW_TOKENS:
                del last[i]
        if active:
            out = model.decode(
                torch.tensor([ids[i][-1] for i in active]),
                torch.tensor([len(prompts[i]) + len(ids[i]) - 1 for i in active]),
                pool,
                torch.tensor([SLOTS[i] for i in active]),
            )
            for row, i in enumerate(active):
                last[i] = out[row]
                seen[i].append(out[row])
        step += 1
    return ids, seen, pool


def test_greedy_ids_in_a_ragged_batch_equal_each_alone(tiny_model) -> None:  # type: ignore[no-untyped-def]
    prompts = _prompts(tiny_model.config.vocab_size)
    together, together_logits, pool = _together(tiny_model, prompts)
    for i, prompt in enumerate(prompts):
        alone, alone_logits = _alone(tiny_model, prompt)
        assert together[i] == alone, f"prompt {i} (length {len(prompt)})"
        for a, b in zip(alone_logits, together_logits[i], strict=True):
            assert torch.allclose(a, b, atol=1e-4, rtol=0)
    assert len({tuple(x) for x in together}) > 1  # the prompts really lead to different continuations
    for layer in pool:
        assert torch.isnan(layer[[1, 4, 8, 10]]).all()  # slots nobody used were never written
        assert not torch.isnan(layer[SLOTS]).any()


def test_batched_forward_equals_rows_alone(tiny_model) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(3)
    batch = torch.randint(0, tiny_model.config.vocab_size, (3, 40), generator=gen)
    together = tiny_model(batch)
    for row in range(3):
        assert torch.allclose(together[row], tiny_model(batch[row : row + 1])[0], atol=1e-5, rtol=0)
