"""Forms validate what the engine validates (issue 25 item 4): the repository and the tag of
patch, rollback and rollout carry the engine's grammar in their JSON schema (pattern,
maxLength), so the run form and the API refuse 'LTSC 2019!' before a run exists; the schema
and the engine's parser agree on every sample."""

from __future__ import annotations

import random
import string

import jsonschema
import pytest
from prefect.utilities.callables import parameter_schema

from regpatch.errors import InvalidReference
from regpatch.reference import Repository, Tag
from regpatch_flows.patch import patch_registry
from regpatch_flows.rollback import rollback_registry
from regpatch_flows.rollout import rollout

FLOWS = {"patch": patch_registry, "rollback": rollback_registry, "rollout": rollout}


def schema_of(fn) -> dict:
    return parameter_schema(fn).model_dump_for_openapi()


def errors(schema: dict, name: str, value) -> list[str]:
    prop = schema["properties"][name]
    return [e.message for e in jsonschema.Draft202012Validator(prop).iter_errors(value)]


def accepted_by_engine(parse, value: str) -> bool:
    try:
        parse(value)
        return True
    except InvalidReference:
        return False


@pytest.mark.parametrize("flow", list(FLOWS))
def test_a_bad_tag_or_repository_is_refused_by_the_form_schema(flow):
    schema = schema_of(FLOWS[flow])
    assert errors(schema, "tag", "LTSC 2019!") and errors(schema, "tag", "") and errors(schema, "tag", "-x")
    assert errors(schema, "tag", "x" * 129)
    assert not errors(schema, "tag", "ltsc2019") and not errors(schema, "tag", "_ltsc2019.1-a")
    assert errors(schema, "repository", "Servercore") and errors(schema, "repository", "windows//servercore")
    assert errors(schema, "repository", "a" * 256)
    assert not errors(schema, "repository", "windows/servercore") and not errors(schema, "repository", "a__b")


def test_the_schema_and_the_engine_agree_on_every_sample():
    schema = schema_of(patch_registry)
    rnd = random.Random(25)
    alphabet = string.ascii_letters + string.digits + "._-/ _!:@"
    samples = ["ltsc2019", "LTSC 2019!", "a", "-a", "_a", ".a", "a..b", "a__b", "a___b", "a--b", "a/b", "a/", "/a",
               "a/_layers", "UPPER", "x" * 128, "x" * 129]
    samples += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12))) for _ in range(3000)]
    for value in samples:
        assert (not errors(schema, "tag", value)) == accepted_by_engine(Tag.parse, value), value
        assert (not errors(schema, "repository", value)) == accepted_by_engine(Repository.parse, value), value


def test_the_flow_refuses_a_bad_tag_with_the_engines_words_before_it_runs():
    from pydantic import TypeAdapter

    from regpatch.params import TagName

    with pytest.raises(ValueError, match=r"invalid tag 'LTSC 2019!'.*\[A-Za-z0-9_\] then up to 127"):
        TypeAdapter(TagName).validate_python("LTSC 2019!")
