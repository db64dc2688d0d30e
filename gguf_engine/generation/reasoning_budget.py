"""A token budget for thinking: llama.cpp's reasoning-budget sampler.

The budget watches the generated tokens for the syntax's thinking start tag (``<think>``, or
gpt-oss's ``<|channel|>analysis<|message|>``), then counts the tokens of the reasoning.  When
``budget`` of them have been generated without an end tag, it forces the forced sequence (an
optional message, then the first end tag: ``</think>`` or gpt-oss's ``<|end|>``) token by token:
every other logit becomes -inf before the sampler and the grammar see the row.  Then it lets the
model go on (to the answer) and re-arms if another thinking block starts.  Budget 0 forces the
end as soon as the block opens; -1 is no budget at all.  A budget armed for control
(llama-server's ``reasoning_control``) exists even without a token budget, so that ``force()``
can end the reasoning at the next token while it runs (``POST /v1/chat/completions/control``).

Tags are matched as token sequences (each tag tokenized on its own, control tokens recognised),
as llama.cpp matches them.  A budget that runs out inside a multi-byte UTF-8 character lets the
model finish the character first.  States, as llama.cpp names them:

    IDLE -> COUNTING -> (WAITING_UTF8) -> FORCING -> DONE (-> COUNTING on a new start tag)
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

import numpy as np


class BudgetState(Enum):
    IDLE = "idle"                  # watching for the start tag
    COUNTING = "counting"          # inside the reasoning, budget running
    WAITING_UTF8 = "waiting_utf8"  # budget spent, a UTF-8 character still open
    FORCING = "forcing"            # writing the forced sequence
    DONE = "done"                  # passthrough (re-armed by a new start tag)


def check_budget(budget, message, where: str = "reasoning_budget_tokens") -> None:
    """ValueError unless budget is an integer >= -1 and message a string (where: the setting's name)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not -1 <= budget <= 2**31 - 1:
        raise ValueError(f"{where} must be an integer: -1 (unrestricted), 0 (end thinking at once) or a "
                         f"token budget N > 0, got {budget!r}")
    if not isinstance(message, str):
        raise ValueError(f"reasoning_budget_message must be a string, got {message!r}")


@dataclass(frozen=True)
class BudgetSettings:
    """A thinking budget as the user gives it: tokens (-1: none) and the message forced before the
    end tag when it runs out (llama-server's ``reasoning_budget_tokens`` / ``reasoning_budget_message``);
    control: the budget is made even without tokens so that the reasoning can be ended on request
    (llama-server's ``reasoning_control``)."""

    tokens: int = -1
    message: str = ""
    control: bool = False

    def __post_init__(self) -> None:
        check_budget(self.tokens, self.message)
        if not isinstance(self.control, bool):
            raise ValueError(f"reasoning_control must be a boolean, got {self.control!r}")

    @property
    def active(self) -> bool:
        return self.tokens >= 0 or self.control


def utf8_complete(piece: bytes) -> bool:
    """Whether piece does not end inside a multi-byte UTF-8 character."""
    n = len(piece)
    for back in range(1, min(4, n) + 1):
        b = piece[n - back]
        if b & 0xC0 == 0x80:           # a continuation byte: look further back for the lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return back >= need
    return True


class TokenMatcher:
    """Finds where any of several token sequences ends in a stream of tokens; a match starts the
    search afresh (matches never overlap)."""

    def __init__(self, seqs: Sequence[Sequence[int]]):
        self.seqs: list[tuple[int, ...]] = []
        for s in seqs:
            t = tuple(int(x) for x in s)
            if t and t not in self.seqs:
                self.seqs.append(t)
        self._longest = max((len(s) for s in self.seqs), default=0)
        self._window: list[int] = []

    def advance(self, token: int) -> int:
        """The index of the longest sequence that ends with this token, or -1."""
        self._window.append(int(token))
        del self._window[:-self._longest or len(self._window)]
        best = -1
        for i, s in enumerate(self.seqs):
            if len(s) <= len(self._window) and tuple(self._window[-len(s):]) == s \
                    and (best < 0 or len(s) > len(self.seqs[best])):
                best = i
        if best >= 0:
            self._window.clear()
        return best

    def reset(self) -> None:
        self._window.clear()


class ReasoningBudget:
    """One generation's budget (see the module's note).  ``apply(row)`` gives the row the sampler
    sees; ``accept(token)`` advances the state with each generated token.

    start: the start tag's tokens; ends: each end tag's tokens; forced: the tokens forced when the
    budget runs out (message + first end tag); piece: a token's bytes (for the UTF-8 check)."""

    def __init__(self, start: Sequence[int], ends: Sequence[Sequence[int]], forced: Sequence[int],
                 budget: int, piece: Callable[[int], bytes]):
        self.start = TokenMatcher([start])
        self.ends = TokenMatcher(ends)
        self.forced = [int(t) for t in forced]
        self.budget = budget if budget >= 0 else 2**31 - 1
        self.remaining = self.budget
        self.piece = piece
        self.state = BudgetState.IDLE
        self.force_pos = 0
        self.last_end: tuple[int, ...] = ()       # the end tag that closed the last reasoning block

    def _open(self) -> None:
        """A reasoning block starts: count, or force at once with no budget."""
        self.remaining = self.budget
        self.ends.reset()
        self.state = BudgetState.COUNTING
        if self.remaining <= 0:
            self._force()

    def _force(self) -> None:
        self.state = BudgetState.FORCING
        self.force_pos = 0
        self.ends.reset()

    def force(self) -> bool:
        """End the reasoning now: the forced sequence (message, end tag) starts at the next token.
        Only a budget that is counting a reasoning block can be forced (False otherwise: before the
        block opens, while already forcing, or after it ended), as llama.cpp's manual transition."""
        if self.state is not BudgetState.COUNTING:
            return False
        self._force()
        return True

    def accept(self, token: int) -> None:
        st = self.state
        if st in (BudgetState.IDLE, BudgetState.DONE):
            if self.start.advance(token) >= 0:
                self._open()
        elif st in (BudgetState.COUNTING, BudgetState.WAITING_UTF8):
            end = self.ends.advance(token)
            if end >= 0:
                self.state = BudgetState.DONE      # the model ended its reasoning itself
                self.last_end = self.ends.seqs[end]
                return
            complete = utf8_complete(self.piece(int(token)))
            if st is BudgetState.WAITING_UTF8:
                if complete:
                    self._force()
            else:
                self.remaining -= 1
                if self.remaining <= 0:
                    if complete:
                        self._force()
                    else:
                        self.state = BudgetState.WAITING_UTF8
                        self.ends.reset()
        else:                                      # FORCING
            self.ends.advance(token)
            self.force_pos += 1
            if self.force_pos >= len(self.forced):
                self.state = BudgetState.DONE
                self.last_end = self.ends.seqs[0]

    def accept_many(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.accept(t)

    def apply(self, row: np.ndarray) -> np.ndarray:
        """row (n_vocab,) itself, or while forcing a copy where every token but the forced one is -inf."""
        if self.state is not BudgetState.FORCING or self.force_pos >= len(self.forced):
            return row
        tok = self.forced[self.force_pos]
        out = np.full(row.shape, -np.inf, dtype=np.float32)
        out[tok] = row[tok]
        return out


def make_budget(settings: BudgetSettings | None, syntax, tokenizer) -> ReasoningBudget | None:
    """The budget of one chat generation, or None (no budget and no control, or a template without
    thinking tags: llama-server has nothing to limit there either).  A prompt that already opened the reasoning
    (``syntax.prefix``, a forced-open ``<think>``) is fed to it first, as llama.cpp feeds it the
    generation prompt."""
    if settings is None or not settings.active or syntax.thinking_tags is None:
        return None
    start, ends = syntax.thinking_tags

    def toks(text: str) -> list[int]:
        return [int(t) for t in tokenizer.encode(text, add_bos=False, special=True)]

    end_toks = [toks(e) for e in ends]
    forced = (toks(settings.message) if settings.message else []) + end_toks[0]
    budget = ReasoningBudget(toks(start), end_toks, forced, settings.tokens,
                             lambda t: tokenizer.token_to_piece(t, False))
    if syntax.prefix:
        budget.accept_many(toks(syntax.prefix))
    return budget


def thinking_tracker(syntax, tokenizer) -> ReasoningBudget | None:
    """A budget that never ends the reasoning by itself, only to tell whether the output is inside
    a reasoning block (a lazy grammar is closed there, see ``generation.grammar.LazyConstraint``);
    None for a syntax without thinking tags."""
    return make_budget(BudgetSettings(control=True), syntax, tokenizer)
