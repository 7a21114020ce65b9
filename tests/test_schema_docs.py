"""docs/config-reference.md is generated from the schema and must not go stale."""

from cslr import schema_docs


def test_reference_is_up_to_date():
    assert schema_docs.REFERENCE.read_text() == schema_docs.render(), "run `inv schema --docs`"


def test_reference_lists_every_env_name():
    from cslr.config import env_fields

    text = schema_docs.render()
    missing = [f.env for f in env_fields() if f"`{f.env}`" not in text]
    assert missing == []


def test_config_yaml_points_editors_at_the_schema():
    from cslr.config import ROOT

    first = (ROOT / "config.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=schema/config.schema.json"
