"""Prompt ids of a Hugging Face tokenizer.json: a BOS exactly where tokenizer.json's post-processor puts
one, whatever tokenizer_config.json's add_bos_token and tokenizer_class say (transformers 5's rule:
its from_pretrained drops add_bos_token / add_eos_token from the config when a tokenizer.json exists),
compared with transformers' AutoTokenizer when it is installed."""

import json

import pytest

from plt_deploy.tokenizer import HFTokenizer

TEXT = "hello world, hello loop"


def write_llama_style(folder, post_processor: bool, tokenizer_class: str | None, add_bos_token: bool) -> None:
    """A small byte-fallback BPE over Metaspace (the Llama layout), trained here on a few words; a
    TemplateProcessing post-processor adding <s> or none; a config whose add_bos_token says the opposite."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator([TEXT] * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    if post_processor:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": add_bos_token}
    if tokenizer_class:
        config["tokenizer_class"] = tokenizer_class
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("tokenizer_class", [None, "LlamaTokenizerFast"])
@pytest.mark.parametrize("post_processor", [False, True])
def test_bos_only_where_the_post_processor_adds_it(tmp_path, post_processor, tokenizer_class):
    from tokenizers import Tokenizer

    write_llama_style(tmp_path, post_processor, tokenizer_class, add_bos_token=not post_processor)
    words = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    assert words and 1 not in words
    tok = HFTokenizer(tmp_path / "tokenizer.json")
    assert tok.bos_id == 1
    assert tok.encode(TEXT) == ([1] if post_processor else []) + words
    assert tok.encode(TEXT, add_bos=False) == words  # a chat template writing its own BOS
    try:
        import transformers
    except ImportError:
        return
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path)).encode(TEXT) == tok.encode(TEXT)
