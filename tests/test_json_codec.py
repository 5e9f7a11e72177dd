"""warren.json_codec: orjson, and the standard library for what orjson refuses."""

from __future__ import annotations

import json

import pytest

from warren.json_codec import dump_json, dump_json_text, load_json


@pytest.mark.parametrize(
    "value",
    [
        {"status": 200, "headers": [["content-type", "text/plain"]], "cf": {"colo": "dev"}},
        {"message": "lone \udc80 half"},  # orjson refuses it
        {"id": 2**70},  # past 64 bits: orjson refuses it
        ["ünïcødé", "🐇", 1.5, None, True],
    ],
)
def test_what_is_dumped_loads_back_as_json_would(value: object) -> None:
    assert load_json(dump_json(value)) == value
    assert json.loads(dump_json_text(value)) == value
    assert load_json(json.dumps(value)) == value  # an escaped lone half: orjson refuses, json takes


def test_bad_json_raises_value_error() -> None:
    with pytest.raises(ValueError):
        load_json(b"{not json")
