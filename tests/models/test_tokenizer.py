"""The locally trained tokenizer: lossless, identifiers in one piece, digits one by one, HF-loadable."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from text2sql_core.models.tokenizer import BOS, EOS, PAD, train_tokenizer

TEXTS = [
    ("Table singer has columns such as Singer_ID, Song_release_year, Name. Singer_ID is the primary key.\n"
    "###Input:\nHow many singers are older than 56?\n\n###Response:SELECT count(*) FROM singer WHERE Age > 56"),
    ("Table concert has columns such as concert_ID, Theme, Year.\n###Input:\nList the themes.\n\n"
    "###Response:SELECT Theme FROM concert WHERE Year = 2014"),
] * 20


def test_roundtrip_is_lossless_and_identifiers_stay_whole(tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS, 1000, tmp_path / "tok")
    text = "SELECT Song_release_year FROM singer WHERE name = 'O''Neil  x;'\n\tAND Age > 1234"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    pieces = [tok.decode([i]) for i in ids]
    assert " Song_release_year" in pieces and " singer" in pieces  # frequent identifiers are one token each
    assert "SELECT" in pieces and "FROM" in pieces
    assert [p for p in pieces if p.isdigit()] == ["1", "2", "3", "4"]  # numbers digit by digit
    assert pieces[pieces.index("N"):pieces.index("N") + 4] == ["N", "e", "i", "l"]  # names letter by letter


def _span(tok, ids: list[int], text: str) -> list[int]:
    """The token ids that spell ``text`` inside ``ids``."""
    pieces = [tok.decode([i]) for i in ids]
    for start in range(len(ids)):
        spelled = ""
        for end in range(start, len(ids)):
            spelled += pieces[end]
            if spelled == text:
                return ids[start:end + 1]
            if not text.startswith(spelled):
                break
    raise AssertionError(f"{text!r} is not spelled by whole tokens in {pieces}")


def test_a_value_has_the_same_tokens_in_the_question_and_in_the_sql(tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS, 1000)
    question = tok("Which singers come from Reykjavik, older than 56?", add_special_tokens=False)["input_ids"]
    sql = tok("WHERE city = 'Reykjavik' AND Age > 56", add_special_tokens=False)["input_ids"]
    for value in ("Reykjavik", "56"):
        assert _span(tok, question, value) == _span(tok, sql, value)
    assert len(_span(tok, sql, "Reykjavik")) == len("Reykjavik")  # letter by letter


def test_special_tokens_and_saved_directory(tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS, 1000, tmp_path / "tok")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    assert tok("SELECT 1")["input_ids"][0] == tok.bos_token_id  # every encoded text starts with <s>
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert loaded("SELECT Theme FROM concert")["input_ids"] == tok("SELECT Theme FROM concert")["input_ids"]
    assert loaded.pad_token_id == tok.pad_token_id != loaded.eos_token_id


def test_vocabulary_is_bounded_and_training_deterministic() -> None:
    a = train_tokenizer(TEXTS, 300)
    b = train_tokenizer(TEXTS, 300)
    assert len(a) <= 300
    assert a.get_vocab() == b.get_vocab()
