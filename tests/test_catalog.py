"""What the Snakemake workflow catalog checks, and the documentation generated from the sources:
snakefmt formatting, `.snakemake-workflow-catalog.yml`, config/README.md from the config schema
and docs/rules.md from the rules' docstrings."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taufm import cli
from taufm.config_docs import REGENERATE_COMMAND as CONFIG_DOCS_COMMAND
from taufm.config_docs import render_config_docs, undescribed_keys
from taufm.errors import TaufmError
from taufm.rule_docs import REGENERATE_COMMAND as RULE_DOCS_COMMAND
from taufm.rule_docs import render_rule_docs, workflow_rules

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = [ROOT / "workflow" / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]


@pytest.mark.skipif(importlib.util.find_spec("snakefmt") is None, reason="snakefmt is not installed (pip install -e '.[test]')")
def test_snakefile_and_rules_are_snakefmt_formatted():
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "--diff", "workflow/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"run `snakefmt workflow/` (settings: [tool.snakefmt] in pyproject.toml):\n{proc.stdout}{proc.stderr}"


def test_config_readme_is_generated_from_the_current_schema():
    checked_in = (ROOT / "config" / "README.md").read_text()
    assert checked_in == render_config_docs(), f"config/README.md is out of date with the config schema: run `{CONFIG_DOCS_COMMAND}`"


def test_rule_docs_are_generated_from_the_current_docstrings():
    checked_in = (ROOT / "docs" / "rules.md").read_text()
    assert checked_in == render_rule_docs(workflow_rules(ROOT / "workflow" / "Snakefile")), f"docs/rules.md is out of date with the rules: run `{RULE_DOCS_COMMAND}`"


def test_every_key_the_default_config_sets_is_described():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    # The backbone definition's model overrides ($defs/backbone) carry no descriptions yet.
    not_yet = {"pretrain.backbones.continuous-mpm.model", "pretrain.backbones.continuous-mpm.model.positional"}
    missing = sorted(set(undescribed_keys(config)) - not_yet)
    assert not missing, f"give these keys a description in src/taufm/schemas/config.schema.yaml: {missing}"


SMALL_SCHEMA = {
    "description": "A small schema.",
    "type": "object",
    "properties": {
        "stage": {
            "type": "object",
            "description": "One stage.",
            "properties": {
                "rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5, "description": "A fraction."},
                "mode": {"enum": ["fast", "slow"], "default": "fast"},
                "cut": {"type": ["integer", "null"], "exclusiveMinimum": 0, "description": "Jets at <most> this; *null*: `a|b`."},
                "sizes": {"type": "array", "items": {"type": "integer", "minimum": 1}, "default": [1, 2]},
                "left": {"$ref": "#/$defs/part"},
                "right": {"$ref": "#/$defs/part", "description": "The right one."},
                "files": {"$ref": "#/$defs/files"},
                "plugins": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Plugins by name."},
            },
        },
        "models": {
            "type": "object",
            "description": "Models by name.",
            "additionalProperties": {"type": "object", "required": ["kind"], "properties": {"kind": {"enum": ["a", "b"]}}},
        },
    },
    "$defs": {
        "part": {"type": "object", "properties": {"width": {"type": "integer", "minimum": 1, "description": "Width."}}},
        "files": {"type": "array", "items": {"type": "string", "minLength": 1}, "default": [], "description": "Some files."},
    },
}


def _table_row(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_config_docs_render_types_defaults_ranges_references_and_maps():
    text = render_config_docs(SMALL_SCHEMA)
    assert _table_row(text, "stage.rate") == ["`stage.rate`", "number", "`0.5`", "0 to 1", "A fraction."]
    assert _table_row(text, "stage.mode")[1:4] == ["string", "`fast`", "one of `fast`, `slow`"]
    # Prose is escaped for Markdown outside code spans, and a pipe never splits a table cell.
    assert _table_row(text, "stage.cut") == ["`stage.cut`", "integer or null", "", "> 0", "Jets at &lt;most&gt; this; \\*null\\*: `a\\|b`."]
    assert _table_row(text, "stage.sizes")[1:4] == ["array of integer", "`[1, 2]`", "each item ≥ 1"]
    # A leaf definition is inlined; an object definition used twice gets one shared table.
    assert _table_row(text, "stage.files")[1:] == ["array of string", "`[]`", "each item not empty", "Some files."]
    assert "[`part`](#part-shared)" in _table_row(text, "stage.left")[4]
    assert _table_row(text, "stage.right")[4].startswith("The right one. Keys:")
    assert "| `stage.left.width` |" not in text
    assert "### `part` (shared)\n\nUsed by `stage.left`, `stage.right`." in text
    assert _table_row(text, "width")[4] == "Width."
    # A mapping of user-chosen names lists its entries' keys under <name>.
    assert _table_row(text, "stage.plugins")[1] == "mapping of name to string"
    assert _table_row(text, "stage.plugins.<name>")[1] == "string"
    assert _table_row(text, "models.<name>.kind")[3] == "required; one of `a`, `b`"
    assert "## `models`\n\nModels by name." in text
    assert "## `stage`\n\nOne stage." in text


def test_undescribed_keys_follow_references_and_maps():
    config = {"stage": {"rate": 1, "mode": "fast", "right": {"width": 2}, "files": []}, "models": {"m": {"kind": "a"}}}
    # An entry of a mapping of names is described by the mapping's description; its keys are not.
    assert undescribed_keys(config, SMALL_SCHEMA) == ["stage.mode", "models.m.kind"]


def _write_workflow(tmp_path: Path, rule_file: str) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "stage.smk").write_text(rule_file)
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text('include: "rules/stage.smk"\n\n\nrule all:\n    """Everything."""\n    input:\n        "b.txt",\n')
    return snakefile


def test_rule_docs_read_docstrings_in_include_order_and_the_loop_rules(tmp_path):
    snakefile = _write_workflow(
        tmp_path,
        'rule make_b:  # a comment\n    """Make b\n    from a.\n\n    Second paragraph."""\n    output:\n        "b.txt",\n\n\n'
        'for family in FAMILIES:\n\n    rule:\n        """A pack."""\n        name:\n            family.rule\n',
    )
    rules = workflow_rules(snakefile)
    assert [doc.names[0] for doc in rules] == ["all", "make_b", "finetune_pack"]
    assert [doc.source for doc in rules] == ["Snakefile", "rules/stage.smk", "rules/stage.smk"]
    assert rules[1].docstring == "Make b\nfrom a.\n\nSecond paragraph."
    assert "finetune_pack_part" in rules[2].names and "finetune_pack_ablations" in rules[2].names
    text = render_rule_docs(rules)
    assert "### `make_b`\n\nMake b from a.\n\nSecond paragraph.\n" in text
    assert "Defined in a loop" in text


def test_rule_docs_refuse_an_undocumented_rule(tmp_path):
    snakefile = _write_workflow(tmp_path, 'rule make_b:\n    output:\n        "b.txt",\n')
    with pytest.raises(TaufmError, match=r"rules/stage.smk:1: the rule has no docstring"):
        workflow_rules(snakefile)


def test_docs_subcommands_write_the_rendered_files_without_a_provenance_record(tmp_path):
    assert cli.main(["config-docs", "--output", str(tmp_path / "config" / "README.md")]) == 0
    assert cli.main(["rule-docs", "--output", str(tmp_path / "rules.md"), "--snakefile", str(ROOT / "workflow" / "Snakefile")]) == 0
    assert (tmp_path / "config" / "README.md").read_text() == render_config_docs()
    assert (tmp_path / "rules.md").read_text() == render_rule_docs(workflow_rules(ROOT / "workflow" / "Snakefile"))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["README.md", "rules.md"]


def test_catalog_file_says_what_the_workflow_supports():
    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert usage["mandatory-flags"]["desc"] and usage["mandatory-flags"]["flags"] == "--cores all"
    sources = {path: path.read_text() for path in RULE_FILES}
    deployment = usage["software-stack-deployment"]
    # conda: every rule that runs a command names the workflow's conda environment.
    assert deployment["conda"] is True and (ROOT / "workflow" / "envs" / "taufm.yaml").is_file()
    for path, text in sources.items():
        assert text.count("shell:") == text.count('conda:\n') == text.count('"../envs/taufm.yaml"'), path
    # apptainer: no rule names a container image.
    assert deployment["apptainer"] is False and deployment["apptainer+conda"] is False
    assert not any(re.search(r"^\s*container:", text, re.MULTILINE) for text in sources.values())
    # report: outputs are marked for `snakemake --report`, each with its caption.
    assert usage["report"] is True
    captions = re.findall(r'caption="\.\./report/([^"]+)"', "".join(sources.values()))
    assert captions and all((ROOT / "workflow" / "report" / name).is_file() for name in captions)
