"""A tokenizer trained locally (no download) on a run's own prompts and SQL, for the ``tiny`` model.

Why a custom one: on two CPU cores training cost grows with sequence length, and a text-to-SQL
prompt is mostly schema identifiers (``Song_release_year``, ``singer_in_concert``). A byte-level BPE
whose pre-tokenizer keeps an identifier (letters, digits, underscores) in one piece learns each
frequent identifier as a single token, so a schema of a few tables costs tens of tokens, not hundreds.

Values are spelled letter by letter. A plain capitalised word inside a line (``Atlanta``,
``Novak``; not ``Which`` opening the question) is split into single characters, and numbers into single digits, in
the question and in the SQL alike, so a value has the very same tokens in both places and copying
it is the same small skill for every value, seen in training or not (measured on the demo: with
BPE pieces for values, a 0.6M-parameter model copies numbers but garbles the names it never saw;
GPT-2's scheme is worse still, as it glues the space to the word: `` Atlanta`` in the question,
``Atlanta`` after the quote in the SQL). Everything else keeps BPE: lowercase words with their
leading space, SQL keywords and other all-caps words, and identifiers with an underscore, a digit
or an inner capital (``Song_release_year``, ``T1``, ``MakeId``), so sequences stay short.
Byte-level encoding keeps the tokenizer lossless: ``decode(encode(s)) == s`` for any text.

The result is saved as a Hugging Face tokenizer directory (``PreTrainedTokenizerFast``) with
``<s>`` (bos), ``</s>`` (eos) and ``<pad>`` so every later stage loads it with ``AutoTokenizer``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

__all__ = ["BOS", "EOS", "PAD", "PRETOKENIZE_PATTERN", "UNK", "train_tokenizer"]

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# One pre-token (BPE merges only inside one) is, in order of preference: an identifier with an underscore
# or a digit, or a CamelCase one, with at most one leading space; a capitalised word opening a line; a lowercase word with its leading space,
# or without one where no letter precedes it; an all-caps word; a single digit; a punctuation run with at
# most one leading space; a run of spaces; a run of newlines; a whitespace character; any single character
# (so the letters of a plain capitalised word come one by one).
PRETOKENIZE_PATTERN = (r" ?[A-Za-z][A-Za-z0-9]*[_0-9][A-Za-z0-9_]*| ?[A-Z][a-z]+[A-Z][A-Za-z0-9_]*|(?<![^\n])[A-Z][a-z]+"
                       r"| [a-z_][A-Za-z0-9_]*|(?<![A-Za-z0-9_])[a-z_][A-Za-z0-9_]*|[A-Z][A-Z0-9_]*(?![a-z])"
                       r"|[0-9]| ?[^\sA-Za-z0-9_]+| +|\n+|\s|.")


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path | None = None,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on ``texts`` and return it (saved to ``out_dir`` when given).

    ``vocab_size`` is an upper bound: a small corpus runs out of pairs to merge earlier, and a
    smaller vocabulary is cheaper for the tiny model anyway. Deterministic for the same texts.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Every encoded text starts with <s>, the way pretrained Llama tokenizers behave; a completion's
    # </s> is appended by the caller (it marks where the SQL ends).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="right", clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast
