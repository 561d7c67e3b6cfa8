"""A hand-set 1-layer transformer with a known carry circuit, for 3+3-digit reversed additions.

Layout of 'a2a1a0+b2b1b0=' with the answer written least significant digit first: BOS is token
0, a's digit of column n is token 3 - n, b's is token 7 - n, '=' (token 8) predicts answer column
0 and the token of answer digit k (9 + k) predicts column k + 1. So the position predicting
column n is 8 + n.

* Head 0 (the column head) attends from 8 + n to the two digits of column n and writes their sum
  to dimension 20, which the unembedding reads: important for every digit, carries no carry.
* Head 1 (the carry head) attends from 8 + n to the two digits of column n - 1 and writes their
  sum to dimension 21, which only MLP neuron 0 reads.
* Neuron 0 (the carry neuron) is GELU(4 (sum - 9.5)): about 0 below a sum of 10 and linear
  above, i.e. on when the carry into column n is 1. It writes to dimension 22, which the
  unembedding reads.
* Neurons 1..DISTRACTORS read the column sums too (so they vary with the operand digits and
  correlate with the carry) but write nothing (W_out = 0). The other neurons are constant.

Embeddings: one-hot positions in dimensions 0-15, the digit value / 9 in dimension 16, and
+-1000 in dimensions 17/18, which fix every LayerNorm's scale (set back by its weight). Every
write also writes its negative in a spare dimension (19, 23-26), so each residual vector sums to
0 and LayerNorm's centring changes nothing: each LayerNorm is nearly the identity and the circuit
is exactly what is planted.
"""

from __future__ import annotations

import random

import torch

from conftest import TOKENIZER, records, zero_model

DISTRACTORS = 4
N_CTX = 16
C = 1000.0


def column_keys(n: int) -> list[int]:
    """Tokens of column n's operand digits in a 3+3-digit problem ([] outside 0..2)."""
    return [3 - n, 7 - n] if 0 <= n <= 2 else []


def carry_circuit_model() -> torch.nn.Module:
    m = zero_model(n_layers=1, n_heads=2, d_model=64, d_mlp=8, n_ctx=N_CTX)
    sigma = C * (2 / 64) ** 0.5  # LayerNorm's std of every residual vector, dominated by +-C
    with torch.no_grad():
        m.W_pos[:, :N_CTX] = torch.eye(N_CTX)
        m.W_pos[:, 19] = -1.0
        for d, i in enumerate(TOKENIZER.digit_ids):
            m.W_E[i, 16], m.W_E[i, 23] = d / 9, -d / 9
        m.W_E[:, 17], m.W_E[:, 18] = C, -C
        for ln in (m.blocks[0].ln1, m.blocks[0].ln2, m.ln_final):
            ln.w.fill_(sigma)
        attn = m.blocks[0].attn
        for h, offset in ((0, 0), (1, 1)):
            for q in range(N_CTX):
                keys = column_keys(q - 8 - offset) if q >= 8 else []
                for k in keys or [0]:
                    attn.W_Q[h, q, k] = 30.0 * 32 ** 0.5  # score 30 on the planted keys, 0 elsewhere
            attn.W_K[h, :N_CTX, :N_CTX] = torch.eye(N_CTX)
            attn.W_V[h, 16, 0] = 1.0
            attn.W_O[h, 0, 20 + h], attn.W_O[h, 0, 24 + h] = 18.0, -18.0  # mean of two digits / 9 -> their sum
        mlp = m.blocks[0].mlp
        mlp.W_in[21, 0], mlp.b_in[0] = 4.0, -38.0
        mlp.W_out[0, 22], mlp.W_out[0, 26] = 0.25, -0.25
        for i in range(1, 1 + DISTRACTORS):
            mlp.W_in[21, i], mlp.W_in[20, i], mlp.b_in[i] = 1.0, 0.5 * (i - 1), -9.5
        digits = torch.tensor(TOKENIZER.digit_ids)
        m.W_U[20, digits] = 0.1 * (torch.arange(10.0) - 4.5)
        m.W_U[22, digits] = torch.arange(10.0) - 4.5
    return m.eval()


def problems(n: int = 200, seed: int = 0) -> list[dict]:
    """n distinct 3+3-digit additions in the model's reversed format."""
    rng = random.Random(seed)
    chosen = set()
    while len(chosen) < n:
        chosen.add((rng.randrange(100, 1000), "+", rng.randrange(100, 1000)))
    return records(*sorted(chosen), answer_order="reversed")
