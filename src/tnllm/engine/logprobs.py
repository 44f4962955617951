"""A sampled token's logprob entry, from its row of the step's payload (host side).

The payload row (``sampling.logprob_payload``) is ``[id, logprob, k best logprobs, their k ids]``;
a request asking fewer ``top_logprobs`` than the batch's largest takes its first ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from tnllm.protocol.outputs import TokenLogprob, TopLogprob
from tnllm.text.vocab import Vocab


def _top(vocab: Vocab | None, token_id: int, logprob: float) -> TopLogprob:
    if vocab is None:  # no tokenizer: the id is all there is
        return TopLogprob(token=str(token_id), token_id=token_id, logprob=logprob)
    return TopLogprob(
        token=vocab.string(token_id), token_id=token_id, logprob=logprob, bytes=vocab.bytes_list(token_id)
    )


def token_logprob(vocab: Vocab | None, row: Sequence[float], top_logprobs: int) -> TokenLogprob:
    """The entry of the token sampled in ``row``, with its ``top_logprobs`` best alternatives."""
    k = (len(row) - 2) // 2
    tops = [_top(vocab, int(row[2 + k + j]), float(row[2 + j])) for j in range(min(top_logprobs, k))]
    chosen = _top(vocab, int(row[0]), float(row[1]))
    return TokenLogprob(**chosen.model_dump(), top_logprobs=tops)
