"""The one table of options (regpatch.options) and what is made of it: the parameter
models, the command line's flags, the inventory's keys."""

from __future__ import annotations

import typing

import pytest

from regpatch.cli import main
from regpatch.cli.parser import build_parser
from regpatch.fleet.inventory import RegistryEntry
from regpatch.options import GROUPS
from regpatch.params import MODELS

KINDS = {str: str, bool: bool, int: int, float: float, list: list}


def _base(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    return typing.get_origin(annotation) or annotation


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_model_field_is_an_option_of_the_table_with_its_kind_and_words(group):
    model, options = MODELS[group], GROUPS[group]
    assert list(model.model_fields) == list(options)
    for name, field in model.model_fields.items():
        o = options[name]
        assert _base(field.annotation) is KINDS[o.kind], (group, name)
        assert (field.title, field.description) == (o.title, o.description)


def test_the_inventory_entry_is_the_registry_model_plus_the_fleets_fields():
    entry = set(RegistryEntry.model_fields)
    assert set(MODELS["registry"].model_fields) <= entry
    assert entry - set(MODELS["registry"].model_fields) == {"group", "work_pool", "verify_command", "trust_keys",
                                                            "allow_unsigned"}
    e = RegistryEntry.model_validate({"name": "a", "storage": "/s", "url": "http://h:5000"})
    assert e.registry_params().registry_url == "http://h:5000" and e.registry_params().name == "a"


def test_a_bad_value_names_the_flag_in_one_line(capsys):
    assert main(["patch", "b", "--repository", "r", "--tag", "t", "--storage", "/x", "--s3-retries", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "regpatch: error: --s3-retries '-1': input should be greater than or equal to 0"
