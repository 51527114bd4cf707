"""Tokenizers: a built-in byte-level one, or a Hugging Face tokenizer.json in the checkpoint folder.

Beside tokenizer.json, as in Hugging Face: tokenizer_config.json gives the bos/eos token strings (its
add_bos_token is not read: tokenizer.json's post-processor decides, see HFTokenizer); the end-of-sequence ids are a LIST (`eos_ids`, generation stops at any of them) taken
from generation_config.json's eos_token_id, else config.json's, else the eos token.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CheckpointError, InputError

HF_TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


class ByteTokenizer:
    """UTF-8 bytes 0..255, then <bos>=256, <eos>=257, <pad>=258 (vocab_size 259)."""

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258
    eos_ids = (257,)
    bos_token, eos_token = "<bos>", "<eos>"

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        # surrogateescape: command-line bytes that are not UTF-8 (Python keeps them as lone
        # surrogates) become the original bytes again, which this tokenizer represents exactly.
        try:
            ids = list(text.encode("utf-8", errors="surrogateescape"))
        except UnicodeEncodeError as exc:  # a lone surrogate that is no escaped byte (U+D800..U+DC7F, ...)
            raise InputError(f"text is not valid Unicode (lone surrogate U+{ord(text[exc.start]):04X} at "
                             f"character {exc.start})") from None
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        return {"<bos>": self.bos_id, "<eos>": self.eos_id, "<pad>": self.pad_id}.get(token)


class HFTokenizer:
    """A `tokenizers` tokenizer.json; bos/eos looked up among common special-token names.

    encode adds the special tokens tokenizer.json's post-processor adds (a BOS only if it says so),
    as transformers 5 and mlx-lm (which loads it) encode a prompt: transformers 5's from_pretrained
    drops add_bos_token / add_eos_token from tokenizer_config.json whenever a tokenizer.json exists,
    for every tokenizer class, LlamaTokenizer(Fast) included (checked against 5.24's AutoTokenizer:
    tests/test_tokenizer_bos.py). transformers 4's LlamaTokenizerFast differed: it rebuilt the
    post-processor from add_bos_token (default True), so a Llama-class folder whose tokenizer.json has
    no BOS post-processor got a BOS there and gets none here."""

    def __init__(self, path: Path, eos_ids: tuple[int, ...] = ()):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception subclass
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
        self.vocab_size = self.tok.get_vocab_size()
        special = _tokenizer_config(path.parent / TOKENIZER_CONFIG_FILE)
        find = lambda *names: next((i for n in names if n and (i := self.tok.token_to_id(n)) is not None), None)  # noqa
        self.bos_id = find(special.get("bos_token"), "<s>", "<bos>", "<|begin_of_text|>", "<|endoftext|>")
        self.eos_id = find(special.get("eos_token"), "</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>")
        self.pad_id = find(special.get("pad_token"), "<pad>", "<|pad|>")
        if self.pad_id is None:
            self.pad_id = self.eos_id if self.eos_id is not None else 0
        self.eos_ids = tuple(eos_ids) or ((self.eos_id,) if self.eos_id is not None else ())
        self.eos_id = self.eos_ids[0] if self.eos_ids else None
        name = lambda i: self.tok.id_to_token(i) if i is not None else None  # noqa: E731
        self.bos_token, self.eos_token = name(self.bos_id) or "", name(self.eos_id) or ""

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """add_bos=False: no special tokens at all (a chat template that writes its own BOS)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = text[exc.start].encode("utf-8", errors="surrogateescape")
            raise InputError(f"text is not valid UTF-8 (byte {bad!r} at character {exc.start}); "
                             "this model's tokenizer.json needs UTF-8 text") from None
        return self.tok.encode(text, add_special_tokens=add_bos).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


def _tokenizer_config(path: Path) -> dict:
    """bos_token / eos_token / pad_token as strings of a tokenizer_config.json ({} if absent)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a valid tokenizer config ({exc})") from None
    out = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in data.items()
           if k in ("bos_token", "eos_token", "pad_token")}
    return out


def eos_ids_of(model_dir: Path, config=None) -> tuple[int, ...]:
    """The end-of-sequence ids, a list as Hugging Face allows: generation_config.json's eos_token_id,
    else the model config's (a Hugging Face config.json keeps it in config.extra["hf"])."""
    found = None
    gen = model_dir / GENERATION_CONFIG_FILE
    if gen.is_file():
        try:
            found = json.loads(gen.read_text()).get("eos_token_id")
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{gen}: not a valid generation config ({exc})") from None
    if found is None and config is not None:
        found = config.extra.get("hf", {}).get("eos_token_id")
    ids = [found] if isinstance(found, int) else list(found or [])
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"{gen if gen.is_file() else model_dir}: eos_token_id must be an id or a list of ids, "
                              f"got {found!r}")
    return tuple(ids)


def needs_own_tokenizer(config, vocab_size: int) -> bool:
    """A Hugging Face model's ids mean nothing as bytes: without its tokenizer.json its text cannot be
    read or written (unless its vocabulary is the byte one, as tests' tiny ones)."""
    return config is not None and bool(config.extra.get("hf")) and vocab_size != ByteTokenizer.vocab_size


def load_tokenizer(model_dir: str | Path | None, vocab_size: int, config=None):
    """tokenizer.json in model_dir if present, else the byte tokenizer; checked against the vocab.
    config (PLTConfig): where a Hugging Face folder's eos list is when it has no generation_config.json."""
    path = Path(model_dir) / HF_TOKENIZER_FILE if model_dir is not None else None
    if path is not None and path.is_file():
        tok = HFTokenizer(path, eos_ids_of(path.parent, config))
    elif needs_own_tokenizer(config, vocab_size):
        raise CheckpointError(f"{path or 'the model'}: not found; a Hugging Face model's text needs its own "
                              "tokenizer: copy tokenizer.json (and tokenizer_config.json, generation_config.json) "
                              "from the model's repository into the folder")
    else:
        tok = ByteTokenizer()
    if tok.vocab_size > vocab_size:
        where = path if isinstance(tok, HFTokenizer) else "the built-in byte tokenizer"
        raise CheckpointError(f"{where}: {tok.vocab_size} tokens do not fit the model's vocab_size {vocab_size}")
    return tok


def printable(text: str) -> str:
    """Text safe to print: bytes that were not UTF-8 (lone surrogates) shown as U+FFFD."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
