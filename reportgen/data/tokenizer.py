"""Character-level tokenizer with a fixed vocabulary shared by every task and format.

The vocabulary is fixed (not learned from data) so that any checkpoint can encode any
prompt, and it is saved in each checkpoint so a model is never paired with the wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reportgen.errors import ReportgenError

SPECIALS = ("<pad>", "<bos>", "<eos>")
# Digits, operators, and the scratchpad marks used by --with-steps:
# ';' separates steps, '|' starts the final answer, 'c' marks a carry, 'b' a borrow.
CHARS = tuple("0123456789+-*=;|cb")
DEFAULT_VOCAB = SPECIALS + CHARS


@dataclass(frozen=True)
class Tokenizer:
    """Maps text to token ids: BOS, one id per character, optionally EOS."""

    vocab: tuple[str, ...] = field(default=DEFAULT_VOCAB)

    def __post_init__(self):
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.vocab)})

    @property
    def pad_id(self) -> int:
        return self._ids["<pad>"]

    @property
    def bos_id(self) -> int:
        return self._ids["<bos>"]

    @property
    def eos_id(self) -> int:
        return self._ids["<eos>"]

    @property
    def digit_ids(self) -> list[int]:
        """Ids of '0'..'9' in digit order: the answer vocabulary analyses restrict to."""
        return [self._ids[str(d)] for d in range(10)]

    def __len__(self) -> int:
        return len(self.vocab)

    @staticmethod
    def normalize(text: str) -> str:
        """Drop whitespace so '59 + 73' and '59+73' are the same prompt."""
        return "".join(text.split())

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Encode normalized text; an unknown character is a ReportgenError naming it."""
        text = self.normalize(text)
        ids = [self.bos_id] if bos else []
        for pos, ch in enumerate(text):
            if ch not in self._ids or ch in SPECIALS:
                raise ReportgenError(
                    f"unknown character {ch!r} at position {pos} of {text!r}; "
                    f"allowed characters are {''.join(CHARS)!r}"
                )
            ids.append(self._ids[ch])
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids, stop_at_eos: bool = True, keep_specials: bool = False) -> str:
        """Text of the ids, stopping at EOS; BOS/PAD are skipped, or written as '<bos>'/'<pad>'
        with `keep_specials` (a model's output holding them is not a clean answer)."""
        out = []
        for i in ids:
            tok = self.vocab[int(i)]
            if tok == "<eos>" and stop_at_eos:
                break
            if keep_specials or tok not in SPECIALS:
                out.append(tok)
        return "".join(out)

    def to_dict(self) -> dict:
        return {"vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        return cls(vocab=tuple(d["vocab"]))
