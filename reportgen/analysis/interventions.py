"""Ablation interventions (DESIGN §4.6): what the answer loses when a component is replaced.

Components: each head (its slice of `blocks.l.attn.hook_z`), each layer's attention output
(`hook_attn_out`) and MLP output (`hook_mlp_out`), replaced at every position, plus heads ablated
together in order of importance. Methods:

* zero: the activation is set to 0 (labelled "zero"; off-distribution, so never the default);
* mean: the position-specific mean over a reference set: `reference_size` freshly generated
  examples (uniform operands of the example's lengths, the batch's operators, seeded; for a
  layout that uniform operands rarely produce, digits of an example redrawn) with the same
  template as the example, i.e. the same text layout (digit/operator/other character at every
  position), so that position p plays the same role in all of them. Reference examples are
  never the analysed ones;
* resample: the activation of another example of the same template: a seeded derangement
  (one random cycle) within the batch's template group, or a reference example where the
  example's template is unique in the batch.

Effects on the answer, teacher forced (the model reads the correct earlier tokens, so every
digit is scored on its own): exact match = the argmax over digits is correct at every answer
position; per-digit accuracy; answer log-probability (log-softmax over the ten digits, summed
over answer digits); margin (mean over answer digits of the correct digit's log-probability
minus the best wrong digit's, which keeps separating models after exact match saturates); for a
scratchpad model, the share of scratchpad digits right. And free generation: greedy decoding
from the prompt with the ablation in place at every position (where a broken scratchpad
compounds into a wrong answer that teacher forcing hides), for the default method. Each is a
mean over examples with a bootstrap interval, overall and per stratum.

Batching: all ablations that start at layer l (e.g. every head of the layer, its attention and
its MLP) run in one forward pass over an expanded batch (components x examples) resumed from the
cached input of layer l.
"""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from reportgen.analysis import stats
from reportgen.analysis.api import task_of, text_batch
from reportgen.analysis.config import DEFAULT_MEMORY_MB, METHODS, InterventionConfig, Method
from reportgen.analysis.engine import answer_digits, digit_log_probs, forward_row_bytes, release_memory, rows_within
from reportgen.analysis.examples import ExampleBatch, example_key, template
from reportgen.findings import AblationEffect, Estimate, InterventionFindings, Metrics
from reportgen.analysis.pairs import remake
from reportgen.analysis.patching import head_can_write
from reportgen.data.arithmetic import STRATA
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen import hooks as hp
from reportgen.model.transformer import Transformer
from reportgen.train.evaluate import final_answer, greedy_decode

DECODE_ROWS = 2048  # at most this many rows decoded together in free generation (each step is mostly overhead)
REFERENCE_TRIES = 100  # draws per wanted reference example, uniform and then perturbed
Spec = dict[str, Optional[list[int]]]  # hook name -> indices along its third axis (heads, neurons), None = all


def _number(rng: random.Random, digits: int) -> int:
    return rng.randrange(10) if digits == 1 else rng.randrange(10 ** (digits - 1), 10**digits)


def _perturbed(rng: random.Random, x: int) -> int:
    """x with each digit redrawn with probability 1/2 (no leading zero)."""
    s = [c if rng.random() < 0.5 else str(rng.randrange(1 if i == 0 and len(str(x)) > 1 else 0, 10))
         for i, c in enumerate(str(x))]
    return int("".join(s))


def reference_records(records: list[dict], size: int, seed: int) -> dict[str, list[dict]]:
    """Up to `size` generated records per template of `records`, none of them equal to one of `records`.

    Operands are uniform over the template's operand lengths; where that rarely hits the template
    (e.g. a one-digit difference of three-digit numbers), the remainder is drawn by redrawing
    digits of an example of the template.
    """
    ops = sorted({r["op"] for r in records})
    seen = {(r["a"], r["b"], r["op"]) for r in records}
    first: dict[str, dict] = {}
    for r in records:
        first.setdefault(template(r), r)
    out = {}
    for t, r in first.items():
        rng = random.Random(f"reportgen-reference:{seed}:{t}")
        la, lb = r["labels"]["len_a"], r["labels"]["len_b"]
        found: list[dict] = []
        draws = [lambda: (_number(rng, la), _number(rng, lb), rng.choice(ops)),
                 lambda: (_perturbed(rng, r["a"]), _perturbed(rng, r["b"]), rng.choice(ops))]
        for draw in draws:
            for _ in range(size * REFERENCE_TRIES):
                if len(found) == size:
                    break
                a, b, op = draw()
                rec = remake(r, a, b, op) if (a, b, op) not in seen else None
                if rec is not None and template(rec) == t:
                    found.append(rec)
        if not found:
            raise ReportgenError(
                f"could not generate reference examples laid out like {r['prompt']!r} for mean/resample "
                "ablation; use zero ablation or other examples"
            )
        out[t] = found
    return out


def _cycle(items: list[int], rng: random.Random) -> dict[int, int]:
    """A random single-cycle permutation of `items` (Sattolo): a derangement, never i -> i."""
    perm = list(items)
    for i in range(len(perm) - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return dict(zip(items, perm))


def _tokens(records: list[dict], tokenizer: Tokenizer, P: int) -> torch.Tensor:
    out = torch.full((len(records), P), tokenizer.pad_id, dtype=torch.long)
    for i, r in enumerate(records):
        ids = tokenizer.encode(r["prompt"] + r["target"], bos=True, eos=True)[:P]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


RESUME_POINTS = hp.RESID_SITES  # where ablated runs resume


def _ablatable(name: str) -> bool:
    return hp.site_of(name) in RESUME_POINTS + (hp.ATTN_Z, hp.ATTN_OUT, hp.MLP_OUT, hp.MLP_POST)


# Hook points of a block (their sites) by where a replacement there enters the residual stream.
_AFTER_ATTN = {hp.ATTN_Z, hp.ATTN_OUT}  # written into resid_mid, linearly
_AFTER_MLP = {hp.MLP_POST, hp.MLP_OUT}  # written into resid_post, linearly
_MLP_SIDE = {hp.RESID_MID, hp.LN2_NORMALIZED, hp.MLP_PRE} | _AFTER_MLP  # computed from resid_mid


ALL = slice(None)  # every example of the batch


class Ablator:
    """The clean run of a batch, cut after its last answer-predicting position, and batched
    ablations of any set of hook points (or heads / neurons of them) with zero, mean or resample
    values.

    `names`: the hook points the ablations replace (default: every ablatable one); only they and
    the residual stream are cached, for the batch and (reduced to what mean and resample values
    read) for the reference set. `memory_mb` bounds the chunks of the passes (with `max_rows`).
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, batch: ExampleBatch, seed: int,
                 reference_size: int = 32, max_rows: int = 512, names: Optional[set[str]] = None,
                 memory_mb: float = DEFAULT_MEMORY_MB):
        self.model, self.tokenizer, self.batch, self.seed = model, tokenizer, batch, seed
        self.reference_size = reference_size
        # Up to the last answer digit's own token, which predicts EOS (free generation reads it).
        self.P = int(batch.pred_pos[batch.answer_mask].max()) + 2
        self.tokens = batch.tokens[:, : self.P]
        self.memory_mb = memory_mb
        self.max_rows = rows_within(memory_mb, forward_row_bytes(model.cfg, self.P), max_rows)
        # Hooks that may be replaced (their reference values are made) and, besides them, the
        # residual stream where ablated runs resume (cached for this batch only).
        self.replaceable = _ablatable if names is None else names.__contains__
        self.cached = lambda n: self.replaceable(n) or hp.site_of(n) in RESUME_POINTS
        with torch.no_grad():
            logits, self.cache = model.run_with_cache(self.tokens, names=self.cached)
        self.digits = answer_digits(batch, tokenizer)
        self.mask = batch.answer_mask
        # Where each answer digit sits among the target digits: the answer comes last.
        n_answer, n_target = batch.answer_mask.sum(1), batch.target_mask.sum(1)
        slot = torch.arange(self.mask.shape[1], device=self.mask.device)
        self.answer_slots = torch.where(self.mask, (n_target - n_answer)[:, None] + slot, 0)
        lut = torch.zeros(len(tokenizer), dtype=torch.long, device=batch.tokens.device)
        lut[tokenizer.digit_ids] = torch.arange(10, device=lut.device)
        self.target_digits = lut[batch.target_ids]
        self.scratchpad = batch.target_mask & (batch.target_roles != 0)  # TARGET_ROLES[0] is "answer"
        self._reads(batch)
        lp, right = self._outcome(self._at_reads(logits[None]))
        self.clean_logprobs, self.clean_teacher_forced = lp[0], right[0]
        self.templates = [template(r) for r in batch.records]
        self._reference = None
        self._reference_values = None
        self._values: dict[tuple, torch.Tensor] = {}

    def _reads(self, batch: ExampleBatch) -> None:
        """The positions predicting every token of each target (digits, separators and the final
        EOS) [B, G], the tokens they should predict, and where the target digits sit among them."""
        starts = [len(r["prompt"]) for r in batch.records]  # token c predicts character c of prompt + target
        counts = [len(r["target"]) + 1 for r in batch.records]
        G = max(counts)
        step = torch.arange(G, device=batch.tokens.device)
        start = torch.tensor(starts, device=step.device)[:, None]
        self.read_mask = step[None] < torch.tensor(counts, device=step.device)[:, None]
        self.read_pos = torch.where(self.read_mask, start + step, 0)
        self.read_next = batch.tokens.gather(1, (self.read_pos + 1).clamp(max=batch.tokens.shape[1] - 1))
        self.digit_slots = torch.where(batch.target_mask, batch.target_pos - start, 0)

    def _at_reads(self, logits: torch.Tensor, rows: slice = ALL) -> torch.Tensor:
        """[k, B, P, V] logits of the examples `rows` -> those at the read positions [k, B, G, V]."""
        k, B, _, V = logits.shape
        return logits.gather(2, self.read_pos[rows][None, :, :, None].expand(k, B, -1, V))

    def _outcome(self, logits: torch.Tensor, rows: slice = ALL) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at the read positions [k, B, G, V] of the examples `rows` -> (digit log-probs at
        the target digits [k, B, T, 10], whether teacher forcing predicts every target token and
        EOS [k, B])."""
        k, B, _, V = logits.shape
        digits = digit_log_probs(logits.gather(2, self.digit_slots[rows][None, :, :, None].expand(k, B, -1, V)),
                                 self.tokenizer)
        right = (logits.argmax(-1) == self.read_next[rows]) | ~self.read_mask[rows]
        return digits, right.all(-1)

    def _target_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """[k, B, P, V] -> digit log-probs at the positions predicting target digits [k, B, T, 10]."""
        return self._outcome(self._at_reads(logits))[0]

    def answers(self, logprobs: torch.Tensor) -> torch.Tensor:
        """Target-level log-probs [..., B, T, 10] -> those of the answer digits [..., B, A, 10]."""
        idx = self.answer_slots.expand(*logprobs.shape[:-3], *self.answer_slots.shape)
        return logprobs.gather(-2, idx[..., None].expand(*idx.shape, logprobs.shape[-1]))

    def reference(self) -> tuple[list[dict], list[str]]:
        """(reference records, their templates), made once; records of a template are contiguous."""
        if self._reference is None:
            groups = reference_records(self.batch.records, self.reference_size, self.seed)
            records = [r for t in sorted(groups) for r in groups[t]]
            self._reference = (records, [template(r) for r in records])
        return self._reference

    @torch.no_grad()
    def reference_values(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor], list[int]]:
        """What mean and resample values read of the reference set, per cached hook name: the
        mean over each template's reference examples {template: [P, ...]}, and the activations
        [R, ...] of the R reference examples resampling takes (their indices, the third item).
        The reference set runs in chunks of whole templates, so its cache is never held whole."""
        if self._reference_values is None:
            records, templates = self.reference()
            B = len(self.templates)
            taken = sorted({s - B for s in self.resample_sources().tolist() if s >= B})
            means: dict[str, dict[str, torch.Tensor]] = {}
            rows: dict[str, list[torch.Tensor]] = {}
            starts = [i for i in range(len(templates)) if i == 0 or templates[i] != templates[i - 1]] + [len(templates)]
            for lo, hi in self._template_chunks(starts):
                tokens = _tokens(records[lo:hi], self.tokenizer, self.P).to(self.tokens.device)
                _, cache = self.model.run_with_cache(tokens, names=self.replaceable)
                for a, b in zip(starts, starts[1:]):
                    if lo <= a < hi:
                        for name, x in cache.items():
                            means.setdefault(name, {})[templates[a]] = x[a - lo:b - lo].mean(0)
                # Copies of the rows resampling takes (a view would keep the chunk's whole cache alive).
                here = torch.tensor([j - lo for j in taken if lo <= j < hi], dtype=torch.long, device=tokens.device)
                for name, x in cache.items():
                    rows.setdefault(name, []).append(x[here])
                del cache  # before the next chunk's pass, not after it
            picked = {n: torch.cat(r) if r else self.cache[n][:0] for n, r in rows.items()}
            self._reference_values = (means, picked, taken)
            release_memory()  # the chunks' caches, which glibc would keep (twice what stays live, at scale)
        return self._reference_values

    def _template_chunks(self, starts: list[int]) -> list[tuple[int, int]]:
        """Row ranges of the reference set of whole templates (`starts`: where each begins, then
        the end) with at most max_rows rows each, unless one template alone has more."""
        chunks, lo = [], 0
        for a, b in zip(starts[1:], starts[2:] + [None]):
            if b is None or b - lo > self.max_rows:
                chunks.append((lo, a))
                lo = a
        return chunks

    def values(self, method: str, name: str) -> torch.Tensor:
        """Replacement activations [B, P, ...] of hook `name` under `method`."""
        key = (method, name)
        if key not in self._values:
            clean = self.cache[name]
            if method == "zero":
                self._values[key] = torch.zeros_like(clean)
            elif method == "mean":
                means = self.reference_values()[0][name]
                self._values[key] = torch.stack([means[t] for t in self.templates])
            elif method == "resample":
                _, picked, taken = self.reference_values()
                B, src = len(self.templates), self.resample_sources()
                at = torch.as_tensor(taken, dtype=torch.long, device=src.device)
                src = torch.where(src < B, src, B + torch.searchsorted(at, src - B))
                self._values[key] = torch.cat([clean, picked[name]])[src]
            else:
                raise ReportgenError(f"unknown ablation method {method!r}; use one of {', '.join(METHODS)}")
        return self._values[key]

    def resample_sources(self) -> torch.Tensor:
        """For each example, the row of [batch; reference] whose activations replace its own: another
        problem of its template (copies of one problem, e.g. '59+73' given twice, never source
        each other), or a reference example where its template has no other problem."""
        _, ref_templates = self.reference()
        rng = random.Random(f"reportgen-resample:{self.seed}")
        first_row: dict[str, int] = {}  # problem -> its first row
        groups: dict[str, list[str]] = {}  # template -> its distinct problems
        for i, (r, t) in enumerate(zip(self.batch.records, self.templates)):
            key = example_key(r)
            if key not in first_row:
                first_row[key] = i
                groups.setdefault(t, []).append(key)
        source: dict[str, int] = {}
        for t in sorted(groups):
            problems = groups[t]
            if len(problems) > 1:
                source.update({k: first_row[v] for k, v in _cycle(problems, rng).items()})
            else:
                refs = [j for j, rt in enumerate(ref_templates) if rt == t]
                source[problems[0]] = len(self.templates) + rng.choice(refs)
        return torch.tensor([source[example_key(r)] for r in self.batch.records], device=self.tokens.device)

    def ablated(self, specs: list[Spec], method: str) -> torch.Tensor:
        """Digit log-probs [S, B, T, 10] at the target digits with each spec's hook points
        replaced by `method` values."""
        return self.ablated_outcome(specs, method)[0]

    def ablated_outcome(self, specs: list[Spec], method: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(`ablated`'s log-probs, whether teacher forcing predicts every target token [S, B]).

        Specs are grouped by their first layer and each group runs resumed from that layer's input,
        in passes of at most max_rows rows: several specs over every example, or one spec over a
        slice of the examples when the examples alone are more.
        """
        B = self.tokens.shape[0]
        out = self.clean_logprobs.new_empty(len(specs), *self.clean_logprobs.shape)
        right = self.clean_teacher_forced.new_empty(len(specs), B)
        starts: dict[int, list[int]] = {}
        for i, spec in enumerate(specs):
            starts.setdefault(min(map(hp.layer_of, spec)), []).append(i)
        per_pass = max(1, self.max_rows // B)
        for start in starts:
            unchanged = [i for i in starts[start] if not self.changes(specs[i], method)]
            out[unchanged], right[unchanged] = self.clean_logprobs, self.clean_teacher_forced
            starts[start] = [i for i in starts[start] if i not in unchanged]
        for start, idx in sorted(starts.items()):
            for s in range(0, len(idx), per_pass):
                chunk = idx[s : s + per_pass]
                step = max(1, self.max_rows // len(chunk))  # all B rows unless one spec's rows exceed max_rows
                for lo in range(0, B, step):
                    rows = slice(lo, lo + step)
                    out[chunk, rows], right[chunk, rows] = self._outcome(
                        self._run(start, [specs[i] for i in chunk], method, rows), rows)
        release_memory()
        return out, right

    def changes(self, spec: Spec, method: str) -> bool:
        """Whether the ablation can change anything: some replaced value differs from the clean
        one in a component that writes to the residual stream (a head with W_O = 0 or a neuron
        with a zero W_out row writes nothing). One that cannot gives the clean result exactly."""
        return any(self._live(method, name)[slice(None) if idx is None else idx].any() for name, idx in spec.items())

    def _live(self, method: str, name: str) -> torch.Tensor:
        """Per index along the third axis (head, neuron; the whole activation otherwise, as one
        entry): whether replacing it changes what it writes to the residual stream."""
        key = ("live", method, name)
        if key not in self._values:
            differs = (self.values(method, name) != self.cache[name]).flatten(0, 1)
            if hp.site_of(name) == hp.ATTN_Z:
                live = differs.any(-1).any(0) & head_can_write(self.model, hp.layer_of(name))
            elif hp.site_of(name) == hp.MLP_POST:
                live = differs.any(0) & self.model.blocks[hp.layer_of(name)].mlp.W_out.detach().ne(0).any(1)
            else:
                live = differs.any().expand(differs.shape[-1])
            self._values[key] = live
        return self._values[key]

    @torch.no_grad()
    def _run(self, start: int, specs: list[Spec], method: str, rows: slice = ALL) -> torch.Tensor:
        """Logits [k, B, G, V] at the read positions (every target token) of the examples `rows`,
        for specs whose first hook points are in layer `start`.

        Replacements in that layer that write linearly into the residual stream (heads' z,
        attn_out; neurons' post, mlp_out) are added as their change to resid_mid or resid_post,
        so the run resumes after them; later ones are applied by hooks. When no hook is in the
        last block, that block runs only at the read positions.
        """
        k, B = len(specs), self.tokens[rows].shape[0]
        names = {n for spec in specs for n in spec}
        here = {hp.site_of(n) for n in names if hp.layer_of(n) == start}
        if here <= _AFTER_MLP:
            resume, skip = "post", {hp.in_block(start, n) for n in here}
        elif here <= _AFTER_ATTN | _MLP_SIDE:
            resume, skip = "mid", {hp.in_block(start, n) for n in here & _AFTER_ATTN}
        else:
            resume, skip = "pre", set()
        if resume == "post":
            x = self.cache[hp.resid_post(start)][rows][None] + self._delta(specs, skip, method, rows)
            first, from_mid = start + 1, False
        elif resume == "mid":
            x = self.cache[hp.resid_mid(start)][rows][None] + self._delta(specs, skip, method, rows)
            first, from_mid = start, True
        else:
            x = self.cache[hp.resid_pre(start)][rows][None]
            first, from_mid = start, False
        x = x.expand(k, -1, -1, -1)
        last = self.model.cfg.n_layers - 1
        narrow = first <= last  # the last block runs: restrict it to the read positions
        hooks = {name: self._hook(name, specs, method, narrow and hp.layer_of(name) == last and
                                  hp.site_of(name) != hp.RESID_PRE, rows)
                 for name in sorted(names - skip)}
        query_pos = self.read_pos[rows].repeat(k, 1) if narrow else None
        run_from = self.model.run_from_mid if from_mid else self.model.run_from
        logits = run_from(x.flatten(0, 1), first, hooks=hooks, query_pos=query_pos)
        logits = logits.view(k, B, *logits.shape[1:])
        return logits if narrow else self._at_reads(logits, rows)

    def _selection(self, name: str, specs: list[Spec], width: int) -> torch.Tensor:
        """[k, width] 1.0 where spec j replaces index i along the hook's third axis (all when None)."""
        sel = torch.zeros(len(specs), width, device=self.tokens.device, dtype=self.model.W_E.dtype)
        for j, spec in enumerate(specs):
            if name in spec:
                sel[j, slice(None) if spec[name] is None else spec[name]] = 1.0
        return sel

    def _delta(self, specs: list[Spec], names: set[str], method: str, rows: slice = ALL) -> torch.Tensor:
        """[k, B, P, d_model]: how each spec's replacements at `names` change the residual stream of
        the examples `rows`."""
        out = 0
        for name in sorted(names):
            block = self.model.blocks[hp.layer_of(name)]
            diff = self.values(method, name)[rows] - self.cache[name][rows]
            sel = self._selection(name, specs, diff.shape[2])
            if hp.site_of(name) == hp.ATTN_Z:
                out = out + torch.einsum("bphe,kh,hed->kbpd", diff, sel, block.attn.W_O.detach())
            elif hp.site_of(name) == hp.MLP_POST:
                out = out + torch.einsum("bpn,kn,nd->kbpd", diff, sel, block.mlp.W_out.detach())
            else:  # attn_out or mlp_out, replaced whole
                out = out + sel[:, None, None, :] * diff[None]
        return out

    def _hook(self, name: str, specs: list[Spec], method: str, at_targets: bool, rows: slice = ALL):
        """The hook replacing `name` per spec in a run of the examples `rows`; `at_targets`: the
        activation only covers the read positions (last block run narrow)."""
        values = self.values(method, name)[rows]
        k, B = len(specs), values.shape[0]
        if at_targets:
            values = values[torch.arange(B, device=values.device)[:, None], self.read_pos[rows]]
        mask = self._selection(name, specs, values.shape[2]).bool()
        mask = mask.view(k, 1, 1, values.shape[2], *([1] * (values.dim() - 3)))
        return self._replacer(mask, values[None], k, B)

    @staticmethod
    def _replacer(mask: torch.Tensor, values: torch.Tensor, k: int, B: int):
        def replace(act, _name):
            return torch.where(mask, values, act.view(k, B, *act.shape[1:])).view(act.shape)
        return replace

    def scores(self, logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example teacher-forced measures of target-digit log-probs [..., B, T, 10]: exact
        match, digit accuracy, answer log-prob (summed over the answer digits) and margin (mean
        over them of the correct digit's log-prob minus the best wrong digit's) of the final
        answer; with a scratchpad, the share of its digits right."""
        answer = self.answers(logprobs)
        right = (answer.argmax(-1) == self.digits) & self.mask
        lp = answer.gather(-1, self.digits.expand(answer.shape[:-1])[..., None])[..., 0]
        wrong = answer.scatter(-1, self.digits.expand(answer.shape[:-1])[..., None], float("-inf")).amax(-1)
        n = self.mask.sum(-1)
        out = {
            "exact_match": (right | ~self.mask).all(-1).double(),
            "digit_accuracy": right.sum(-1).double() / n,
            "logprob": (lp * self.mask).sum(-1).double(),
            "margin": ((lp - wrong) * self.mask).sum(-1).double() / n,
        }
        if self.scratchpad.any():
            hit = (logprobs.argmax(-1) == self.target_digits) & self.scratchpad
            out["scratchpad_accuracy"] = hit.sum(-1).double() / self.scratchpad.sum(-1).clamp(min=1)
        return out

    def metrics(self, logprobs: torch.Tensor, free: Optional[torch.Tensor] = None) -> Metrics:
        """Metrics (bootstrap intervals over examples) of target-digit log-probs [B, T, 10] and,
        when given, free-generation exact match [B]."""
        return self.metrics_many(logprobs[None], None if free is None else free[None])[0]

    def metrics_many(self, logprobs: torch.Tensor, free: Optional[torch.Tensor] = None) -> list[Metrics]:
        """`metrics` of S interventions at once, logprobs [S, B, T, 10] and free [S, B]: every
        measure of every intervention is one column of a single bootstrap over examples (per
        stratum, over that stratum's examples), the same intervals as one estimate each (to the
        float32 rounding of stats.bootstrap_means, which depends on a column's place)."""
        scores = {k: v.cpu().numpy() for k, v in self.scores(logprobs).items()}  # name -> [S, B]
        if free is not None:
            scores["free_exact_match"] = free.double().cpu().numpy()
        names, S = list(scores), logprobs.shape[0]
        columns = np.concatenate([scores[k] for k in names]).T  # [B, names * S]
        strata = np.array([r["labels"]["stratum"] for r in self.batch.records])
        present = [st for st in STRATA if (strata == st).any()]

        def estimates(rows: np.ndarray) -> dict[str, list[Estimate]]:
            mean, lo, hi, n = stats.bootstrap_means(columns[rows], self.seed)
            ests = [Estimate(float(a), float(b), float(c), int(d)) for a, b, c, d in zip(mean, lo, hi, n)]
            return {k: ests[i * S:(i + 1) * S] for i, k in enumerate(names)}

        est = estimates(np.ones(len(strata), dtype=bool))
        by = {st: estimates(strata == st) for st in present}
        per = lambda k, i: {st: by[st][k][i] for st in present}  # noqa: E731
        return [Metrics(est["exact_match"][i], est["digit_accuracy"][i], est["logprob"][i], per("exact_match", i),
                        per("digit_accuracy", i), per("logprob", i), est["margin"][i], per("margin", i),
                        est["free_exact_match"][i] if free is not None else None,
                        per("free_exact_match", i) if free is not None else {},
                        est["scratchpad_accuracy"][i] if "scratchpad_accuracy" in est else None)
                for i in range(S)]

    @torch.no_grad()
    def free_exact_match(self, specs: list[Spec], method: str, teacher_forced: torch.Tensor) -> torch.Tensor:
        """[S, B] whether greedy decoding from the prompt, with each spec's replacement in place
        at every position it generates, ends in the right final answer. Where teacher forcing
        predicts every target token right (`teacher_forced` [S, B], from ablated_outcome), greedy
        decoding writes the target exactly; only the other rows are decoded."""
        records = self.batch.records
        out = teacher_forced.clone()
        todo = (~teacher_forced).nonzero()  # [R, 2]: (spec, example)
        if not len(todo):
            return out
        names = sorted({n for spec in specs for n in spec})
        masks = {n: self._selection(n, specs, self.values(method, n).shape[2]).bool() for n in names}

        def hooks_for(index: torch.Tensor, positions: torch.Tensor):
            spec, row = todo[index, 0], todo[index, 1]
            inside = positions < self.P  # beyond the last answer digit there is no value to put in
            hooks = {}
            for n in names:
                if not masks[n][spec].any():  # no row of this pass replaces anything here
                    continue
                values = self.values(method, n)[row[:, None], positions.clamp(max=self.P - 1)]  # [rows, P', ...]
                extra = [1] * (values.dim() - 3)
                mask = masks[n][spec].view(len(index), 1, values.shape[2], *extra) & inside.view(*inside.shape, 1, *extra)
                hooks[n] = lambda act, _name, v=values, m=mask: torch.where(m, v, act)
            return hooks

        rows = todo[:, 1].tolist()
        max_new = max(len(records[i]["target"]) for i in rows) + 1
        preds = greedy_decode(self.model, self.tokenizer, [records[i]["prompt"] for i in rows], max_new,
                              self._decode_rows(method, specs), hooks_for)
        release_memory()  # the decoding buffers
        out[todo[:, 0], todo[:, 1]] = torch.tensor([final_answer(p) == final_answer(records[i]["target"])
                                                    for i, p in zip(rows, preds)], device=out.device)
        return out

    def _decode_rows(self, method: str, specs: list[Spec]) -> int:
        """Rows decoded together within the memory budget: each holds its keys and values, its
        spec's replacement values at its positions (and their masked copies) and the prefill's
        activations. Decoding is all that runs then, so it may take twice a pass's share."""
        cfg = self.model.cfg
        kv = 2 * cfg.n_layers * cfg.n_ctx * cfg.d_model * 4
        width = max(sum(self.values(method, n)[0, 0].numel() for n in spec) for spec in specs)
        row = kv + 2 * cfg.n_ctx * width * 4 + forward_row_bytes(cfg, self.P)
        return rows_within(2 * self.memory_mb, row, DECODE_ROWS)

    def forget(self, method: str) -> None:
        """Drop the replacement values of `method` (once its ablations are done)."""
        self._values = {k: v for k, v in self._values.items() if method not in k}

    @torch.no_grad()
    def clean_free_exact_match(self) -> torch.Tensor:
        """[B] the same for the unablated model."""
        return self.free_exact_match([{}], "mean", self.clean_teacher_forced[None])[0]


def head_spec(layer: int, head: int) -> Spec:
    return {hp.attn_z(layer): [head]}


def run_interventions(model: Transformer, tokenizer: Tokenizer, batch: ExampleBatch, cfg: InterventionConfig,
                      seed: int, memory_mb: float = DEFAULT_MEMORY_MB) -> InterventionFindings:
    """DESIGN §4.6: each head, each layer's attention and MLP under every method; cumulative
    ablation (default method) of the heads ranked by how much their own ablation lowers the mean
    answer log-probability (largest drop first; ties in layer, head order). Passes are chunked
    to `memory_mb`."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = {name for l in range(L) for name in (hp.attn_z(l), hp.attn_out(l), hp.mlp_out(l))}
    ab = Ablator(model, tokenizer, batch, seed, cfg.reference_size, cfg.max_rows, names, memory_mb)
    heads = [(l, h) for l in range(L) for h in range(H)]
    components: list[tuple[str, Spec]] = []
    if cfg.heads:
        components += [(f"L{l}H{h}", head_spec(l, h)) for l, h in heads]
    if cfg.layers:
        for l in range(L):
            components += [(f"L{l}.attn", {hp.attn_out(l): None}), (f"L{l}.mlp", {hp.mlp_out(l): None})]
    effects, head_logprob = [], None
    for method in cfg.methods:
        if not components:
            break
        specs = [spec for _, spec in components]
        lps, teacher_forced = ab.ablated_outcome(specs, method)
        free = ab.free_exact_match(specs, method, teacher_forced) if method == cfg.default_method else None
        metrics = ab.metrics_many(lps, free)
        effects += [AblationEffect(name, method, mt) for (name, _), mt in zip(components, metrics)]
        if method == cfg.default_method and cfg.heads:
            head_logprob = ab.scores(lps[: len(heads)])["logprob"].mean(-1)
        if method != cfg.default_method:
            ab.forget(method)
    cumulative = []
    if cfg.cumulative:
        if head_logprob is None:
            head_logprob = ab.scores(ab.ablated([head_spec(l, h) for l, h in heads], cfg.default_method))["logprob"].mean(-1)
        order = sorted(range(len(heads)), key=lambda i: (float(head_logprob[i]), i))
        K = min(cfg.cumulative_max_k or len(heads), len(heads))
        specs = []
        for k in range(1, K + 1):
            spec: Spec = {}
            for i in order[:k]:
                spec.setdefault(hp.attn_z(heads[i][0]), []).append(heads[i][1])
            specs.append(spec)
        lps = ab.ablated(specs, cfg.default_method)
        cumulative = [AblationEffect(f"top-{k + 1}", cfg.default_method, mt) for k, mt in enumerate(ab.metrics_many(lps))]
    return InterventionFindings(clean=ab.metrics(ab.clean_logprobs, ab.clean_free_exact_match()), effects=effects,
                                cumulative=cumulative,
                                default_method=cfg.default_method)


class InterventionAnalyzer:
    """Ablations on problems given as text ('12 + 34'), in the model's own input format.

    `task` is the checkpoint's data spec (`Checkpoint.task`); without it, `api.task_of` decides.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: Optional[dict] = None,
                 method: Method = "mean", seed: int = 0):
        if method not in METHODS:
            raise ReportgenError(f"unknown ablation method {method!r}; use one of {', '.join(METHODS)}")
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)
        self.method, self.seed = method, seed

    def measure_layer_importance(self, examples: list[str], component: str = "attn") -> dict[int, dict[str, float]]:
        """{layer: {"exact_match", "digit_accuracy", "logprob", "margin": clean minus ablated}} when that
        layer's attention ("attn") or MLP ("mlp") output is ablated; large = important."""
        if component not in ("attn", "mlp"):
            raise ReportgenError(f"component must be 'attn' or 'mlp', got {component!r}")
        batch = text_batch(self.model, self.tokenizer, examples, self.task)
        ab = Ablator(self.model, self.tokenizer, batch, self.seed)
        out = {"attn": hp.attn_out, "mlp": hp.mlp_out}[component]
        specs = [{out(l): None} for l in range(self.model.cfg.n_layers)]
        clean = {k: float(v.mean()) for k, v in ab.scores(ab.clean_logprobs).items()}
        ablated = ab.scores(ab.ablated(specs, self.method))
        return {l: {k: clean[k] - float(v[l].mean()) for k, v in ablated.items()} for l in range(len(specs))}
