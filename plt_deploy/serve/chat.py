"""The tokenizer the server uses: the model's tokenizer plus a chat template.

The template is the checkpoint's own (`chat_template` in tokenizer_config.json beside
tokenizer.json, or a chat_template.jinja file there, a Jinja2 template as in Hugging Face) when it
has one; otherwise PLAIN_TEMPLATE: one line "role: content" per message, then "assistant:" for the
model to continue. As Hugging Face does, an own template gets the bos/eos token strings and its
text is encoded without adding special tokens (the template writes them).

Templates run in the environment Hugging Face's apply_chat_template gives them (a sandbox with
trim_blocks, lstrip_blocks, loop controls and `{% generation %}`; `raise_exception`, `strftime_now`
and a `tojson` that keeps key order) and are compiled when the tokenizer loads, so a template that cannot
compile fails at startup, not on each request.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError, InputError
from ..tokenizer import load_tokenizer

PLAIN_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")


class ServeTokenizer:
    """encode / decode / special ids of the model's tokenizer, and apply_chat_template."""

    def __init__(self, tok, chat_template: str | None = None):
        self.tok = tok
        self.chat_template = chat_template
        self.has_own_template = chat_template is not None
        self.bos_id, self.eos_id, self.pad_id = tok.bos_id, tok.eos_id, tok.pad_id
        self.eos_ids = tuple(tok.eos_ids)  # generation stops at any of them
        self.vocab_size = tok.vocab_size
        try:
            self._compiled = _environment().from_string(chat_template or PLAIN_TEMPLATE)
        except Exception as exc:  # noqa: BLE001  (jinja2's TemplateSyntaxError and friends)
            raise CheckpointError(f"the chat template does not compile: {exc}") from None

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return self.tok.encode(text, add_bos=add_bos)

    def decode(self, ids) -> str:
        return self.tok.decode(ids)

    def apply_chat_template(self, messages: list[dict]) -> str:
        """messages [{"role", "content"}] -> the prompt text ending where the assistant's reply starts."""
        try:
            own = self.has_own_template
            return self._compiled.render(messages=messages, add_generation_prompt=True,
                                         bos_token=self.tok.bos_token if own else "",
                                         eos_token=self.tok.eos_token if own else "")
        except Exception as exc:  # noqa: BLE001  (jinja2 raises many types on template errors)
            raise InputError(f"the chat template failed on these messages: {exc}") from None


    def encode_chat(self, messages: list[dict]) -> list[int]:
        """The prompt ids of a chat: an own template's text as is (it holds the bos string), the plain
        template's after a bos."""
        return self.encode(self.apply_chat_template(messages), add_bos=not self.has_own_template)


def _environment():
    """The Jinja2 environment of Hugging Face's apply_chat_template, written here (see module docstring)."""
    import datetime

    import jinja2.ext
    import jinja2.sandbox

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Generation(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %} (Hugging Face marks the assistant's tokens with it for
        training masks): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


def load_serve_tokenizer(model_dir: str | Path | None, vocab_size: int, config=None) -> ServeTokenizer:
    tok = load_tokenizer(model_dir, vocab_size, config)
    template, source = None, None
    cfg = Path(model_dir) / "tokenizer_config.json" if model_dir is not None else None
    if cfg is not None and cfg.is_file():
        try:
            template = json.loads(cfg.read_text()).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{cfg}: not a valid tokenizer config ({exc})") from None
        if isinstance(template, list):  # Hugging Face's named templates: [{"name", "template"}]; "default" is used
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            if "default" not in named:
                raise CheckpointError(f"{cfg}: chat_template lists named templates ({', '.join(map(str, named))}) "
                                      "but none named 'default', the one a chat request uses")
            template = named["default"]
        if template is not None and not isinstance(template, str):
            raise CheckpointError(f"{cfg}: chat_template must be a Jinja2 template string or a list of named ones")
        source = cfg
    jinja = Path(model_dir) / "chat_template.jinja" if model_dir is not None else None
    if template is None and jinja is not None and jinja.is_file():
        template, source = jinja.read_text(), jinja
    try:
        return ServeTokenizer(tok, template)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
