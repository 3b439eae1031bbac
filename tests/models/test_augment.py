"""Value augmentation: values the SQL copies from the question change in both places, nothing else does."""

from __future__ import annotations

import random
import re

from text2sql_core.models.augment import swap_copied_values


def _prompt(question: str) -> str:
    return ("##Instruction:\nshop contains tables such as product. Table product has columns such as name, price, "
            f"city.\n###Input:\n{question}\n\n###Response:")


def test_strings_like_words_and_numbers_are_swapped_consistently() -> None:
    prompt = _prompt("Which products from Oslo or New York cost more than 1250 and have a name containing Tent?")
    sql = ("SELECT name FROM product WHERE (city = 'Oslo' OR city = 'New York') AND price > 1250 "
           "AND name LIKE '%Tent%'")
    new_prompt, new_sql = swap_copied_values(prompt, sql, random.Random(0))
    assert new_prompt.split("###Input:")[0] == prompt.split("###Input:")[0]  # the schema is untouched
    question = new_prompt.split("###Input:\n")[1]
    for old in ("Oslo", "New", "York", "1250", "Tent"):
        assert old not in question and old not in new_sql
    number = re.search(r"price > (\d+)", new_sql).group(1)
    assert len(number) == 4 and not number.startswith("0") and f"than {number} " in question
    city = re.search(r"city = '(\w+)' OR", new_sql).group(1)
    assert city[0].isupper() and len(city) == 4 and f"from {city} or" in question
    like = re.search(r"LIKE '%(\w+)%'", new_sql).group(1)
    assert f"containing {like}?" in question
    # the SQL's structure is unchanged
    assert re.sub(r"'[^']*'|\d+", "V", new_sql) == re.sub(r"'[^']*'|\d+", "V", sql)


def test_values_not_taken_from_the_question_and_identifiers_stay() -> None:
    prompt = _prompt("Which product is the most expensive?")
    assert swap_copied_values(prompt, "SELECT name FROM product ORDER BY price DESC LIMIT 1", random.Random(0)) is None
    # "name" is both a word of the question and a column: only the literal changes
    prompt = _prompt("Which products have the name Price?")
    _new_prompt, new_sql = swap_copied_values(prompt, "SELECT price FROM product WHERE name = 'Price'",
                                             random.Random(1))
    assert new_sql.startswith("SELECT price FROM product WHERE name = '") and "'Price'" not in new_sql
    assert swap_copied_values("no markers here", "SELECT 1", random.Random(0)) is None


def test_same_rng_same_rewrite() -> None:
    prompt = _prompt("How many products cost more than 30?")
    sql = "SELECT count(*) FROM product WHERE price > 30"
    assert swap_copied_values(prompt, sql, random.Random(7)) == swap_copied_values(prompt, sql, random.Random(7))
