"""Tokenizers: a built-in byte-level one, or a Hugging Face tokenizer.json in the checkpoint folder."""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError, InputError

HF_TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes 0..255, then <bos>=256, <eos>=257, <pad>=258 (vocab_size 259)."""

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258

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
    """A `tokenizers` tokenizer.json; bos/eos looked up among common special-token names."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception subclass
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
        self.vocab_size = self.tok.get_vocab_size()
        find = lambda *names: next((i for n in names if (i := self.tok.token_to_id(n)) is not None), None)  # noqa
        self.bos_id = find("<s>", "<bos>", "<|begin_of_text|>", "<|endoftext|>")
        self.eos_id = find("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>")
        self.pad_id = find("<pad>", "<|pad|>")
        if self.pad_id is None:
            self.pad_id = self.eos_id if self.eos_id is not None else 0

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = text[exc.start].encode("utf-8", errors="surrogateescape")
            raise InputError(f"text is not valid UTF-8 (byte {bad!r} at character {exc.start}); "
                             "this model's tokenizer.json needs UTF-8 text") from None
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


def load_tokenizer(model_dir: str | Path | None, vocab_size: int):
    """tokenizer.json in model_dir if present, else the byte tokenizer; checked against the vocab."""
    path = Path(model_dir) / HF_TOKENIZER_FILE if model_dir is not None else None
    tok = HFTokenizer(path) if path is not None and path.is_file() else ByteTokenizer()
    if tok.vocab_size > vocab_size:
        where = path if isinstance(tok, HFTokenizer) else "the built-in byte tokenizer"
        raise CheckpointError(f"{where}: {tok.vocab_size} tokens do not fit the model's vocab_size {vocab_size}")
    return tok


def printable(text: str) -> str:
    """Text safe to print: bytes that were not UTF-8 (lone surrogates) shown as U+FFFD."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
