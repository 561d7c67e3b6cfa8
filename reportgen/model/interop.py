"""Models in and out of reportgen: TransformerLens (HookedTransformer) and Hugging Face GPT-2.

reportgen's Transformer computes the same function as a HookedTransformer with standard learned
positions, LayerNorm, exact GELU, attention scaled by 1/sqrt(d_head), an unembedding bias and no
weight processing, so converting to and from TransformerLens only renames weights. GPT-2 in
`transformers` computes the same function but has no unembedding bias: export folds b_U into the
final LayerNorm's bias (a vector c with c @ W_U = b_U, which exists when W_U has full column
rank), checks on the task's own inputs that the logits stay within float32 rounding, and records
the original biases in config.json so that an import restores them. An import refuses, by name,
every source option that would make reportgen compute a different function.

Weights are read with safetensors or torch's weights-only unpickler, never as arbitrary pickles.
Nothing here imports transformer_lens or transformers: the files are plain JSON and safetensors.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from reportgen.data.arithmetic import TASK_OPS, make_record
from reportgen.data.dataset import count_questions, stratified_examples
from reportgen.data.tokenizer import CHARS, SPECIALS, Tokenizer
from reportgen.errors import ReportgenError, file_problem
from reportgen.model.checkpoint import Checkpoint, file_sha256, non_finite
from reportgen.model.transformer import ModelConfig, Transformer

KINDS = ("transformer-lens", "hf")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"  # {reportgen token: id}: the --vocab map `reportgen import` reads
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
MAX_JSON_BYTES = 1 << 20
FOLD_RESIDUAL = 1e-5  # max |c @ W_U - b_U| (float64) of a folded unembedding bias
FOLD_LOGITS = 1e-4  # max logit change of the folded model on the task's inputs (float32)
FOLD_CHECK_EXAMPLES = 256
RESTORE_TOLERANCE = 2 * FOLD_RESIDUAL  # max logit change of restoring a Hugging Face export's recorded biases
UNUSED_PREFIX = "<unused:"  # vocabulary entry of a source token id the --vocab map leaves unmapped

# reportgen's top-level weights and their TransformerLens names; block weights share their names.
_TL_TOP = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U", "b_U": "unembed.b_U"}


# ================================================================= export
def export_files(ckpt: Checkpoint, to: str) -> dict[str, bytes]:
    """The files of `ckpt` exported for `to` ("transformer-lens" or "hf"), by name.

    Refuses (ReportgenError) a model the target cannot hold without computing a different function.
    """
    if to == "transformer-lens":
        return _tl_files(ckpt)
    if to == "hf":
        return _hf_files(ckpt)
    raise ReportgenError(f"unknown export format {to!r}; use one of {', '.join(KINDS)}")


def tl_config(cfg: ModelConfig, name: str = "reportgen") -> dict[str, Any]:
    """Keyword arguments of the HookedTransformerConfig that computes what `cfg` computes."""
    return {
        "model_name": name, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
        "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "n_ctx": cfg.n_ctx, "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.d_vocab, "act_fn": "gelu", "normalization_type": "LN", "eps": cfg.ln_eps,
        "positional_embedding_type": "standard", "attn_only": False,
    }


def tl_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """`model`'s weights under HookedTransformer names (no weight processing)."""
    return {_TL_TOP.get(k, k): v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _tl_files(ckpt: Checkpoint) -> dict[str, bytes]:
    name = f"reportgen-{Path(ckpt.path).resolve().parent.name}"
    return {
        CONFIG_FILE: _json_bytes(tl_config(ckpt.model.cfg, name)),
        WEIGHTS_FILE: _safetensors_bytes(tl_state_dict(ckpt.model), _export_metadata(ckpt)),
        VOCAB_FILE: _json_bytes(vocab_map(ckpt.tokenizer)),
    }


def vocab_map(tokenizer: Tokenizer) -> dict[str, int]:
    """{token: id} of the tokenizer's tokens (unused ids of an imported model left out)."""
    return {t: i for i, t in enumerate(tokenizer.vocab) if not t.startswith(UNUSED_PREFIX)}


def folded_final_bias(ckpt: Checkpoint) -> torch.Tensor:
    """ln_final.b + c with c @ W_U = b_U: the final LayerNorm bias of a model that computes the
    same logits with no unembedding bias (GPT-2 has none).

    c is the least-squares solution in float64; refused where it does not reproduce b_U (W_U of
    rank below d_vocab) or where the folded model's logits on the task's inputs move by more than
    FOLD_LOGITS (a large c costs float32 precision).
    """
    model = ckpt.model
    W_U, b_U = model.W_U.detach().double().cpu(), model.b_U.detach().double().cpu()
    c = torch.linalg.lstsq(W_U.T, b_U[:, None]).solution[:, 0].float()
    residual = float((c.double() @ W_U - b_U).abs().max())
    if residual > FOLD_RESIDUAL:
        raise ReportgenError(
            f"cannot export {ckpt.path} to Hugging Face: GPT-2 has no unembedding bias, and this model's b_U cannot "
            f"be moved into ln_f.bias (W_U, {model.cfg.d_model}x{model.cfg.d_vocab}, has rank below d_vocab: the "
            f"closest fold is off by {residual:.2g}); export it with --to transformer-lens")
    folded = model.ln_final.b.detach().cpu() + c
    change = _fold_logit_change(ckpt, folded)
    if change > FOLD_LOGITS:
        raise ReportgenError(
            f"cannot export {ckpt.path} to Hugging Face: GPT-2 has no unembedding bias, and moving b_U into "
            f"ln_f.bias changes this model's logits by up to {change:.2g} (more than {FOLD_LOGITS:g}) in float32; "
            "export it with --to transformer-lens")
    return folded


@torch.no_grad()
def _fold_logit_change(ckpt: Checkpoint, folded_bias: torch.Tensor) -> float:
    """Max |logit change| when b_U is moved into the final LayerNorm's bias as `folded_bias`, at
    every position of FOLD_CHECK_EXAMPLES stratified problems of the model's task and format."""
    model = ckpt.model
    folded = copy.deepcopy(model)
    folded.ln_final.b.copy_(folded_bias)
    folded.b_U.zero_()
    tokens = task_tokens(ckpt.task, ckpt.tokenizer, FOLD_CHECK_EXAMPLES).to(model.device)
    return float((model(tokens) - folded(tokens)).abs().max())


def task_tokens(task: dict, tokenizer: Tokenizer, n: int) -> torch.Tensor:
    """Token ids [n, width] of `n` stratified problems of the task and format (fewer where the task
    has fewer), each BOS + prompt + target + EOS, padded at the end."""
    n = min(n, count_questions(task["task"], task["min_digits"], task["max_digits"]))
    records = stratified_examples(task["task"], n, task["max_digits"], task["min_digits"], 0,
                                  task["with_steps"], task["answer_order"])
    seqs = [tokenizer.encode(r["prompt"] + r["target"], bos=True, eos=True) for r in records]
    tokens = torch.full((len(seqs), max(map(len, seqs))), tokenizer.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
    return tokens


def _hf_files(ckpt: Checkpoint) -> dict[str, bytes]:
    model, tok = ckpt.model, ckpt.tokenizer
    ln_f_bias = folded_final_bias(ckpt)
    record = {
        "note": "reportgen model: b_U was folded into ln_f.bias (GPT-2 has no unembedding bias); "
                "`reportgen import` restores ln_final_b and b_U from here while the weights are unchanged",
        "ln_final_b": [float(x) for x in model.ln_final.b.detach().cpu()],
        "b_U": [float(x) for x in model.b_U.detach().cpu()],
        "checkpoint_sha256": ckpt.sha256,
        "task": dict(ckpt.task),
    }
    return {
        CONFIG_FILE: _json_bytes(hf_config(model.cfg, tok, record)),
        WEIGHTS_FILE: _safetensors_bytes(hf_state_dict(model, ln_f_bias), _export_metadata(ckpt)),
        VOCAB_FILE: _json_bytes(vocab_map(tok)),
        **hf_tokenizer_files(tok, model.cfg.n_ctx),
    }


def hf_config(cfg: ModelConfig, tokenizer: Tokenizer, record: dict) -> dict[str, Any]:
    """config.json of the GPT2LMHeadModel that computes what `cfg` computes (dropout off, exact GELU,
    untied unembedding), with `record` under "reportgen"."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.d_vocab,
        "n_positions": cfg.n_ctx, "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp, "activation_function": "gelu", "layer_norm_epsilon": cfg.ln_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "add_cross_attention": False,
        "tie_word_embeddings": False, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id, "dtype": "float32", "use_cache": True, "reportgen": record,
    }


def hf_state_dict(model: Transformer, ln_f_bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel weights of `model` with `ln_f_bias` as the final LayerNorm's bias.

    GPT-2's Conv1D layers compute x @ weight + bias; c_attn holds every head's queries, then keys,
    then values, head h in columns h*d_head .. (h+1)*d_head.
    """
    cfg = model.cfg
    d, m = cfg.d_model, cfg.d_mlp
    out = {"transformer.wte.weight": model.W_E, "transformer.wpe.weight": model.W_pos}
    for l, block in enumerate(model.blocks):
        a, p = block.attn, f"transformer.h.{l}"
        heads = lambda W: W.permute(1, 0, 2).reshape(d, d)  # noqa: E731  [h, d, e] -> [d, h*e]
        out.update({
            f"{p}.ln_1.weight": block.ln1.w, f"{p}.ln_1.bias": block.ln1.b,
            f"{p}.attn.c_attn.weight": torch.cat([heads(a.W_Q), heads(a.W_K), heads(a.W_V)], dim=1),
            f"{p}.attn.c_attn.bias": torch.cat([a.b_Q.reshape(d), a.b_K.reshape(d), a.b_V.reshape(d)]),
            f"{p}.attn.c_proj.weight": a.W_O.reshape(d, d), f"{p}.attn.c_proj.bias": a.b_O,
            f"{p}.ln_2.weight": block.ln2.w, f"{p}.ln_2.bias": block.ln2.b,
            f"{p}.mlp.c_fc.weight": block.mlp.W_in.reshape(d, m), f"{p}.mlp.c_fc.bias": block.mlp.b_in,
            f"{p}.mlp.c_proj.weight": block.mlp.W_out.reshape(m, d), f"{p}.mlp.c_proj.bias": block.mlp.b_out,
        })
    out.update({"transformer.ln_f.weight": model.ln_final.w, "transformer.ln_f.bias": ln_f_bias,
                "lm_head.weight": model.W_U.T})
    return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


def hf_tokenizer_files(tokenizer: Tokenizer, n_ctx: int) -> dict[str, bytes]:
    """tokenizer.json and tokenizer_config.json for `transformers`' fast tokenizer: one token per
    character, whitespace dropped, <bos> prepended; an unknown character is an encoding error."""
    ids = {t: i for i, t in enumerate(tokenizer.vocab)}
    split = lambda regex, behavior: {"type": "Split", "pattern": {"Regex": regex}, "behavior": behavior,  # noqa: E731
                                     "invert": False}
    bos = {"SpecialToken": {"id": "<bos>", "type_id": 0}}
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": ids[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s in SPECIALS],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(r"\s+", "Removed"), split(".", "Isolated")]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [tokenizer.bos_id], "tokens": ["<bos>"]}},
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": ids, "unk_token": "<unk>"},  # <unk> is not in the vocabulary
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "model_max_length": n_ctx, "clean_up_tokenization_spaces": False}
    return {"tokenizer.json": _json_bytes(tokenizer_json), "tokenizer_config.json": _json_bytes(config)}


def _export_metadata(ckpt: Checkpoint) -> dict[str, str]:
    return {"format": "pt", "reportgen_checkpoint_sha256": ckpt.sha256,
            "reportgen_task": json.dumps(dict(ckpt.task), sort_keys=True)}


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# ================================================================= import
def import_model(kind: str, src: str | Path, task: dict, vocab_path: str | Path
                 ) -> tuple[Transformer, Tokenizer, dict[str, Any]]:
    """A reportgen model, its tokenizer and checkpoint metadata (`data`, `imported_from`) from the
    `kind` model at `src`, for `task` (the checkpoint's data spec), with the token ids of the --vocab
    map at `vocab_path`. Refuses (ReportgenError) a source reportgen cannot represent exactly."""
    if kind not in KINDS:
        raise ReportgenError(f"unknown source format {kind!r}; use one of {', '.join(KINDS)}")
    src = Path(src)
    config_path, weights_path = source_files(kind, src)
    where = f"cannot import {src}"
    config = read_json(config_path, f"{kind} config")
    weights = read_weights(weights_path)
    convert = from_transformer_lens if kind == "transformer-lens" else from_hf
    cfg, state, notes = convert(config, weights, where)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()} - {"float32"})
    if dtypes:
        notes.append(f"weights converted from {', '.join(dtypes)} to float32")
    model = _model(cfg, state, where)
    raw_map = read_json(vocab_path, "vocab map")
    tokenizer, mapping = tokenizer_from_map(raw_map, vocab_path, cfg.d_vocab, task)
    _check_context(task, cfg, where)
    files = {"config": config_path, "weights": weights_path, "vocab_map": Path(vocab_path)}
    origin = {
        "kind": kind, "path": str(src.resolve()), "files": {k: str(p.resolve()) for k, p in files.items()},
        "sha256": {k: file_sha256(p) for k, p in files.items()}, "vocab_map": mapping, "notes": notes,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reportgen_version": _reportgen_version(),
    }
    return model, tokenizer, {"data": dict(task), "imported_from": origin}


def source_files(kind: str, src: Path) -> tuple[Path, Path]:
    """(config.json, weights file) of a source: a directory holding both, or a weights file with
    config.json beside it. A directory's weights are model.safetensors, else its one .safetensors,
    .pt, .pth or .bin file."""
    layout = (f"a {kind} model is a directory holding {CONFIG_FILE} and its weights ({WEIGHTS_FILE}, or one "
              f".safetensors, {', '.join(TORCH_SUFFIXES)} file); see the README, 'Exporting and importing models'")
    if not src.exists() and not src.is_symlink():
        raise ReportgenError(f"{src} not found; {layout}")
    if src.is_dir():
        config = src / CONFIG_FILE
        if (src / f"{WEIGHTS_FILE}.index.json").exists() or (src / "pytorch_model.bin.index.json").exists():
            raise ReportgenError(f"cannot import {src}: its weights are split into shards; save the model in one "
                                 f"file ({WEIGHTS_FILE})")
        if (src / WEIGHTS_FILE).exists():
            weights = src / WEIGHTS_FILE
        else:
            found = sorted(p for p in src.iterdir() if p.suffix in (".safetensors", *TORCH_SUFFIXES))
            if len(found) != 1:
                what = "no weights file" if not found else f"several weights files ({', '.join(p.name for p in found)})"
                raise ReportgenError(f"cannot import {src}: it holds {what}; {layout}")
            weights = found[0]
    else:
        config, weights = src.parent / CONFIG_FILE, src
    if not config.exists():
        raise ReportgenError(f"cannot import {src}: {config} not found; {layout}")
    return config, weights


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file's value; a missing, oversized or malformed file is a one-line error."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ReportgenError(f"{what} {path} {problem}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ReportgenError(f"{what} {path} is larger than {MAX_JSON_BYTES >> 20} MB; it should be a small JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ReportgenError(f"{what} {path} is not valid JSON ({str(e)[:120]})") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict (name -> tensor) from a safetensors file or a torch.save zip archive read with
    the weights-only unpickler; anything else (a plain pickle, a file that would run code) is refused."""
    problem = file_problem(path)
    if problem:
        raise ReportgenError(f"weights file {path} {problem}")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        state = _torch_weights(path)
    elif len(head) == 9 and head[8:9] == b"{":
        state = _safetensors_weights(path)
    else:
        raise ReportgenError(
            f"{path} is neither a safetensors file nor a torch state dict (a zip archive from torch.save); save the "
            "weights with safetensors.torch.save_file or torch.save(model.state_dict(), ...); plain pickles are "
            "refused because loading them can run code")
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ReportgenError(f"{path} does not hold a state dict (a mapping of weight names to tensors); save "
                             "model.state_dict()")
    return state


def _torch_weights(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():
            raise ReportgenError(
                f"refused to load {path}: it contains Python objects that could run code when loaded; save only the "
                "state dict (torch.save(model.state_dict(), ...)) or use safetensors") from None
        raise ReportgenError(f"{path} is corrupt or not a torch state dict ({_first_line(e)})") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError for damaged archives
        raise ReportgenError(f"{path} is corrupt or not a torch state dict ({_first_line(e)})") from None


def _safetensors_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError for a damaged header or data
        raise ReportgenError(f"{path} is not a valid safetensors file ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__


# ----------------------------------------------------------------- TransformerLens
def _is(expected):
    return lambda v, c: v == expected


# Options that change what a HookedTransformer computes: each must hold reportgen's value (the
# test gets the value and the whole config); absent ones take HookedTransformerConfig's default.
_TL_OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "positional_embedding_type": ("standard", _is("standard"),
                                  "reportgen has learned absolute positions only ('standard')"),
    "act_fn": ("relu", _is("gelu"), "reportgen's MLP uses exact GELU ('gelu')"),
    "normalization_type": ("LN", lambda v, c: v in ("LN", "LNPre"), "reportgen has LayerNorm ('LN' or 'LNPre')"),
    "attn_only": (False, _is(False), "reportgen's blocks have an MLP"),
    "parallel_attn_mlp": (False, _is(False), "reportgen's MLP reads the residual stream after attention"),
    "gated_mlp": (False, _is(False), "reportgen's MLP is not gated"),
    "n_key_value_heads": (None, lambda v, c: v is None or v == _tl_heads(c),
                          "reportgen has a key and a value per query head (no grouped-query attention)"),
    "use_local_attn": (False, _is(False), "reportgen attends to every earlier position"),
    "attn_types": (None, lambda v, c: v is None or (isinstance(v, list) and all(t == "global" for t in v)),
                   "reportgen attends to every earlier position"),
    "attention_dir": ("causal", _is("causal"), "reportgen's attention is causal"),
    "use_attn_scale": (True, _is(True), "reportgen scales attention scores by 1/sqrt(d_head)"),
    "attn_scale": (-1.0, lambda v, c: v == -1.0 or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and math.isclose(v, math.sqrt(c["d_head"]), rel_tol=1e-9)),
                   "reportgen scales attention scores by 1/sqrt(d_head)"),
    "scale_attn_by_inverse_layer_idx": (False, _is(False), "reportgen scales every layer's scores alike"),
    "final_rms": (False, _is(False), "reportgen's final norm is a LayerNorm"),
    "uses_rms_norm": (False, _is(False), "reportgen has LayerNorm, not RMSNorm"),
    "post_embedding_ln": (False, _is(False), "reportgen has no LayerNorm after the embedding"),
    "use_normalization_before_and_after": (False, _is(False), "reportgen normalises only before each sublayer"),
    "use_qk_norm": (False, _is(False), "reportgen does not normalise queries and keys"),
    "clip_qkv": (None, _is(None), "reportgen does not clip queries, keys and values"),
    "use_logn_attn": (False, _is(False), "reportgen does not scale attention by log n"),
    "use_dynamic_ntk_rope": (False, _is(False), "reportgen has no rotary positions"),
    "use_NTK_by_parts_rope": (False, _is(False), "reportgen has no rotary positions"),
    "use_yarn_rope": (False, _is(False), "reportgen has no rotary positions"),
    "num_experts": (None, _is(None), "reportgen's MLP is not a mixture of experts"),
    "attn_scores_soft_cap": (-1.0, lambda v, c: v is None or v <= 0, "reportgen does not soft-cap attention scores"),
    "output_logits_soft_cap": (-1.0, lambda v, c: v is None or v <= 0, "reportgen does not soft-cap logits"),
    "use_attention_sinks": (False, _is(False), "reportgen has no attention sinks"),
    "relative_attention_max_distance": (None, _is(None), "reportgen has no relative attention"),
    "relative_attention_num_buckets": (None, _is(None), "reportgen has no relative attention"),
    "load_in_4bit": (False, _is(False), "reportgen holds float32 weights"),
    "layer_norm_folding": (False, _is(False), "reportgen's LayerNorms are not folded"),
    "d_vocab_out": (-1, lambda v, c: v in (-1, c.get("d_vocab")), "reportgen unembeds to the whole vocabulary"),
}
# Options that leave the function unchanged (hook points, initialisation, tokenizer, device) or
# that only act with an option refused above.
_TL_HARMLESS = {
    "model_name", "d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp", "d_vocab", "eps", "device",
    "n_devices", "dtype", "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in",
    "use_hook_tokens", "default_prepend_bos", "tokenizer_prepends_bos", "tokenizer_name", "original_architecture",
    "from_checkpoint", "checkpoint_index", "checkpoint_label_type", "checkpoint_value", "init_mode", "seed",
    "initializer_range", "init_weights", "n_params", "trust_remote_code", "decoder_start_token_id",
    "tie_word_embeddings", "ungroup_grouped_query_attention", "quantization_method", "window_size", "rotary_dim",
    "rotary_base", "rotary_base_local", "rotary_scaling_factor", "rotary_adjacent_pairs",
    "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor", "NTK_original_ctx_len",
    "yarn_factor", "yarn_attention_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_original_max_position_embeddings",
    "yarn_truncate", "yarn_global_attn_only", "train_seq_length", "experts_per_token", "norm_topk_prob",
}
_TL_BUFFERS = (".attn.mask", ".attn.IGNORE")  # attention buffers a HookedTransformer's state dict may hold


def _holds(ok, value: Any, config: dict) -> bool:
    """Whether an option's value is one reportgen computes (a value of the wrong type is not)."""
    try:
        return bool(ok(value, config))
    except TypeError:
        return False


def _tl_heads(c: dict) -> Any:
    n = c.get("n_heads", -1)
    return c["d_model"] // c["d_head"] if n == -1 else n


def from_transformer_lens(config: Any, weights: dict[str, torch.Tensor], where: str
                          ) -> tuple[ModelConfig, dict[str, torch.Tensor], list[str]]:
    """reportgen's config and state dict for a HookedTransformerConfig's keyword arguments and the
    model's state dict (loaded without weight processing, or with any of it: folding and centring
    change weights, not the function). Every option reportgen does not compute is refused by name."""
    if not isinstance(config, dict):
        raise ReportgenError(f"{where}: its {CONFIG_FILE} is not a JSON object of HookedTransformerConfig arguments")
    for key in ("d_model", "d_head", "n_layers", "n_ctx", "d_vocab"):
        if not _positive_int(config.get(key)):
            raise ReportgenError(f"{where}: its {CONFIG_FILE} needs {key} as a positive integer, got "
                                 f"{str(config.get(key))[:40]!r}")
    for key, value in config.items():
        if key in _TL_OPTIONS:
            _, ok, why = _TL_OPTIONS[key]
            if not _holds(ok, value, config):
                raise ReportgenError(f"{where}: TransformerLens option {key}={value!r} is not supported ({why})")
        elif key not in _TL_HARMLESS:
            raise ReportgenError(f"{where}: unknown TransformerLens option {key}={str(value)[:40]!r}; reportgen cannot "
                                 f"tell whether it changes what the model computes (remove it from {CONFIG_FILE} if "
                                 "it does not)")
    for key, (default, ok, why) in _TL_OPTIONS.items():
        if key not in config and not _holds(ok, default, config):
            raise ReportgenError(f"{where}: TransformerLens option {key} is not given, and its default {default!r} is "
                                 f"not supported ({why}); set it in {CONFIG_FILE}")
    heads, d_mlp = _tl_heads(config), config.get("d_mlp")
    d_mlp = 4 * config["d_model"] if d_mlp is None else d_mlp
    if not _positive_int(heads) or not _positive_int(d_mlp):
        raise ReportgenError(f"{where}: n_heads and d_mlp must be positive integers, got {heads!r} and {d_mlp!r}")
    if heads * config["d_head"] != config["d_model"]:
        raise ReportgenError(f"{where}: d_head * n_heads ({config['d_head']} * {heads}) differs from d_model "
                             f"({config['d_model']}); reportgen's heads split d_model")
    cfg = _model_config(where, n_layers=config["n_layers"], n_heads=heads, d_model=config["d_model"], d_mlp=d_mlp,
                        n_ctx=config["n_ctx"], d_vocab=config["d_vocab"], ln_eps=config.get("eps", 1e-5))
    notes = []
    state = {k: v for k, v in weights.items() if not k.endswith(_TL_BUFFERS)}
    if config.get("normalization_type", "LN") == "LNPre":
        notes.append("LayerNorms without weights (LNPre): set to scale 1 and bias 0")
        for name in _ln_names(cfg):
            for part, value in (("w", 1.0), ("b", 0.0)):
                if f"{name}.{part}" in state:
                    raise ReportgenError(f"{where}: normalization_type is 'LNPre' but the weights hold {name}.{part}")
                state[f"{name}.{part}"] = torch.full((cfg.d_model,), value)
    if "unembed.W_U" not in state and config.get("tie_word_embeddings") and "embed.W_E" in state:
        notes.append("tied embeddings: W_U set to W_E transposed")
        state["unembed.W_U"] = state["embed.W_E"].T
    inverse = {v: k for k, v in _TL_TOP.items()}
    return cfg, {inverse.get(k, k): v for k, v in state.items()}, notes


def _ln_names(cfg: ModelConfig) -> list[str]:
    return [f"blocks.{l}.{n}" for l in range(cfg.n_layers) for n in ("ln1", "ln2")] + ["ln_final"]


# ----------------------------------------------------------------- Hugging Face GPT-2
# GPT-2 options that change what the model computes: (default, test, why).
_HF_OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "activation_function": ("gelu_new", _is("gelu"),
                            "reportgen's MLP uses exact GELU ('gelu'); 'gelu_new' is GPT-2's tanh approximation"),
    "scale_attn_weights": (True, _is(True), "reportgen scales attention scores by 1/sqrt(d_head)"),
    "scale_attn_by_inverse_layer_idx": (False, _is(False), "reportgen scales every layer's scores alike"),
    "add_cross_attention": (False, _is(False), "reportgen is decoder-only"),
}
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older GPT-2 files hold


def from_hf(config: Any, weights: dict[str, torch.Tensor], where: str
            ) -> tuple[ModelConfig, dict[str, torch.Tensor], list[str]]:
    """reportgen's config and state dict for a GPT-2 (`transformers`) config.json and state dict.

    GPT-2 has no unembedding bias: b_U is 0, unless config.json holds the biases a reportgen export
    folded into ln_f.bias and the weights still compute them (then they are restored exactly)."""
    if not isinstance(config, dict):
        raise ReportgenError(f"{where}: its {CONFIG_FILE} is not a JSON object")
    if config.get("model_type") != "gpt2":
        raise ReportgenError(f"{where}: model_type {str(config.get('model_type'))[:40]!r} is not supported; reportgen "
                             "imports GPT-2 models (model_type 'gpt2') from Hugging Face")
    archs = config.get("architectures") or ["GPT2LMHeadModel"]
    if not isinstance(archs, list) or not set(archs) <= {"GPT2LMHeadModel", "GPT2Model"}:
        raise ReportgenError(f"{where}: architectures {str(archs)[:60]} are not supported; reportgen imports a causal "
                             "language model (GPT2LMHeadModel)")
    for key, (default, ok, why) in _HF_OPTIONS.items():
        value = config.get(key, default)
        if not _holds(ok, value, config):
            raise ReportgenError(f"{where}: GPT-2 option {key}={value!r}{'' if key in config else ' (the default)'} "
                                 f"is not supported ({why})")
    for key in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size"):
        if not _positive_int(config.get(key)):
            raise ReportgenError(f"{where}: its {CONFIG_FILE} needs {key} as a positive integer, got "
                                 f"{str(config.get(key))[:40]!r}")
    d, h = config["n_embd"], config["n_head"]
    d_mlp = config.get("n_inner") or 4 * d
    cfg = _model_config(where, n_layers=config["n_layer"], n_heads=h, d_model=d, d_mlp=d_mlp,
                        n_ctx=config["n_positions"], d_vocab=config["vocab_size"],
                        ln_eps=config.get("layer_norm_epsilon", 1e-5))
    sd = {k.removeprefix("transformer."): v for k, v in weights.items() if not k.endswith(_HF_BUFFERS)}
    notes = []
    if "lm_head.weight" not in sd and config.get("tie_word_embeddings", True) and "wte.weight" in sd:
        notes.append("tied embeddings: W_U set to W_E transposed")
        sd["lm_head.weight"] = sd["wte.weight"]
    take = _Taker(sd, where)
    dh = cfg.d_head
    state = {"W_E": take("wte.weight", (cfg.d_vocab, d)), "W_pos": take("wpe.weight", (cfg.n_ctx, d))}
    for l in range(cfg.n_layers):
        p, b = f"h.{l}", f"blocks.{l}"
        qkv_w, qkv_b = take(f"{p}.attn.c_attn.weight", (d, 3 * d)), take(f"{p}.attn.c_attn.bias", (3 * d,))
        for i, n in enumerate("QKV"):
            state[f"{b}.attn.W_{n}"] = qkv_w[:, i * d:(i + 1) * d].reshape(d, h, dh).permute(1, 0, 2)
            state[f"{b}.attn.b_{n}"] = qkv_b[i * d:(i + 1) * d].reshape(h, dh)
        state.update({
            f"{b}.ln1.w": take(f"{p}.ln_1.weight", (d,)), f"{b}.ln1.b": take(f"{p}.ln_1.bias", (d,)),
            f"{b}.attn.W_O": take(f"{p}.attn.c_proj.weight", (d, d)).reshape(h, dh, d),
            f"{b}.attn.b_O": take(f"{p}.attn.c_proj.bias", (d,)),
            f"{b}.ln2.w": take(f"{p}.ln_2.weight", (d,)), f"{b}.ln2.b": take(f"{p}.ln_2.bias", (d,)),
            f"{b}.mlp.W_in": take(f"{p}.mlp.c_fc.weight", (d, d_mlp)),
            f"{b}.mlp.b_in": take(f"{p}.mlp.c_fc.bias", (d_mlp,)),
            f"{b}.mlp.W_out": take(f"{p}.mlp.c_proj.weight", (d_mlp, d)),
            f"{b}.mlp.b_out": take(f"{p}.mlp.c_proj.bias", (d,)),
        })
    W_U, ln_f_bias = take("lm_head.weight", (cfg.d_vocab, d)).T, take("ln_f.bias", (d,))
    state.update({"ln_final.w": take("ln_f.weight", (d,)), "W_U": W_U})
    take.check_all_used()
    ln_b, b_U, note = _restored_biases(config.get("reportgen"), ln_f_bias, W_U)
    state.update({"ln_final.b": ln_b, "b_U": b_U})
    return cfg, state, notes + [note]


def _restored_biases(record: Any, ln_f_bias: torch.Tensor, W_U: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(ln_final.b, b_U): the biases a reportgen export recorded, where the weights still compute
    what they computed (within RESTORE_TOLERANCE on every logit), else ln_f.bias and zero."""
    d, v = W_U.shape
    try:
        ln_b = torch.tensor(record["ln_final_b"], dtype=torch.float32)
        b_U = torch.tensor(record["b_U"], dtype=torch.float32)
        ok = ln_b.shape == (d,) and b_U.shape == (v,)
    except (TypeError, KeyError, ValueError, RuntimeError):
        ok = False
    if not ok:
        return ln_f_bias, torch.zeros(v), "GPT-2 has no unembedding bias: b_U set to 0"
    # The logits of the two differ by the same vector at every position: (ln_b - ln_f_bias) @ W_U + b_U.
    gap = float(((ln_b.double() - ln_f_bias.double()) @ W_U.double() + b_U.double()).abs().max())
    if gap > RESTORE_TOLERANCE:
        return ln_f_bias, torch.zeros(v), ("GPT-2 has no unembedding bias: b_U set to 0 (the biases a reportgen export "
                                           f"recorded no longer match the weights: logits would move by {gap:.2g})")
    return ln_b, b_U, "ln_final.b and b_U restored from the reportgen export's record (GPT-2 folds b_U into ln_f.bias)"


class _Taker:
    """Takes named tensors of the expected shapes from a state dict, and names what it left."""

    def __init__(self, sd: dict[str, torch.Tensor], where: str):
        self.sd, self.where, self.used = sd, where, set()

    def __call__(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.sd:
            raise ReportgenError(f"{self.where}: its weights have no {name}")
        t = self.sd[name]
        if tuple(t.shape) != shape:
            raise ReportgenError(f"{self.where}: {name} has shape {tuple(t.shape)}, its config says {shape}")
        self.used.add(name)
        return t

    def check_all_used(self) -> None:
        extra = sorted(set(self.sd) - self.used)
        if extra:
            raise ReportgenError(f"{self.where}: its weights hold {extra[0]}"
                                 f"{f' and {len(extra) - 1} more' if len(extra) > 1 else ''}, which GPT-2 as "
                                 "reportgen reads it does not have")


# ----------------------------------------------------------------- shared
def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _model_config(where: str, **shape) -> ModelConfig:
    try:
        return ModelConfig(**shape)
    except ReportgenError as e:
        raise ReportgenError(f"{where}: {e}") from None


def _model(cfg: ModelConfig, state: dict[str, torch.Tensor], where: str) -> Transformer:
    """A reportgen model holding exactly `state` (float32), which must fill it."""
    model = Transformer(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = (f"no {_tl_name(missing[0])}" if missing
                else f"{_tl_name(extra[0])}, which reportgen's model does not have")
        raise ReportgenError(f"{where}: its weights hold {what}")
    for k, t in expected.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise ReportgenError(f"{where}: {_tl_name(k)} has shape {tuple(state[k].shape)}, its config says "
                                 f"{tuple(t.shape)}")
    bad = non_finite(state)
    if bad:
        raise ReportgenError(f"{where}: its weights hold a NaN or an infinity ({_tl_name(bad)})")
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()})
    return model.eval()


def _tl_name(name: str) -> str:
    return _TL_TOP.get(name, name)


def tokenizer_from_map(raw: Any, path: str | Path, d_vocab: int, task: dict) -> tuple[Tokenizer, dict[str, int]]:
    """The tokenizer of a model whose token ids the --vocab map gives: a JSON object from reportgen's
    tokens (<pad>, <bos>, <eos> and characters) to the source model's ids. Every token the task's
    format uses must be mapped, to distinct ids below d_vocab; ids left over are named '<unused:ID>'
    (a model writing one gives a wrong answer)."""
    tokens = list(SPECIALS) + list(CHARS)
    if not isinstance(raw, dict):
        raise ReportgenError(f"vocab map {path} must be a JSON object from reportgen's tokens to the model's token "
                             'ids, e.g. {"<bos>": 0, "0": 1, "+": 11}')
    seen: dict[int, str] = {}
    for token, i in raw.items():
        if token not in tokens:
            raise ReportgenError(f"vocab map {path}: {token!r} is not a reportgen token; its keys are "
                                 f"{', '.join(tokens)}")
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < d_vocab:
            raise ReportgenError(f"vocab map {path}: {token!r} maps to {json.dumps(i)[:40]}, which is not a token id "
                                 f"of the model (an integer from 0 to {d_vocab - 1})")
        if i in seen:
            raise ReportgenError(f"vocab map {path}: {seen[i]!r} and {token!r} both map to id {i}; each token needs "
                                 "its own id")
        seen[i] = token
    needed = [t for t in tokens if t in SPECIALS or t in task_characters(task)]
    missing = [t for t in needed if t not in raw]
    if missing:
        raise ReportgenError(f"vocab map {path} does not map {', '.join(missing)}; the task ({_describe(task)}) needs "
                             f"{' '.join(needed)}")
    vocab = tuple(seen.get(i, f"{UNUSED_PREFIX}{i}>") for i in range(d_vocab))
    return Tokenizer(vocab=vocab), {t: raw[t] for t in tokens if t in raw}


def task_characters(task: dict) -> set[str]:
    """Every character the task's records use (prompt and target), from its longest problems and a
    stratified sample (a scratchpad's ';' appears only with two or more columns)."""
    return set("".join(r["prompt"] + r["target"] for r in _task_records(task)))


def _task_records(task: dict) -> list[dict]:
    big = 10 ** task["max_digits"] - 1
    n = min(64, count_questions(task["task"], task["min_digits"], task["max_digits"]))
    longest = [make_record(big, big, op, task["with_steps"], task["answer_order"]) for op in TASK_OPS[task["task"]]]
    return longest + stratified_examples(task["task"], n, task["max_digits"], task["min_digits"], 0,
                                         task["with_steps"], task["answer_order"])


def _check_context(task: dict, cfg: ModelConfig, where: str) -> None:
    """The task's longest input (BOS + prompt + target + EOS) must fit the model's context."""
    longest = max(len(r["prompt"]) + len(r["target"]) + 2 for r in _task_records(task))
    if longest > cfg.n_ctx:
        raise ReportgenError(f"{where}: its context ({cfg.n_ctx} positions) is shorter than the longest input of the "
                             f"task ({_describe(task)}: {longest} tokens with <bos> and <eos>)")


def _describe(task: dict) -> str:
    return (f"{task['task']}, {task['min_digits']}-{task['max_digits']} digits, "
            f"{'with' if task['with_steps'] else 'without'} steps, {task['answer_order']} answers")


def _reportgen_version() -> str:
    from reportgen.fingerprint import library_version

    return library_version("reportgen") or "unknown"
