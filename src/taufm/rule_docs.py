"""Documentation of the workflow's rules, rendered as Markdown from their docstrings.

``docs/rules.md`` is this module's output (``taufm rule-docs --output docs/rules.md``). The rules
are read from the source, not from a loaded workflow: the Snakefile and the rule files it
includes, in that order, each ``rule NAME:`` with the docstring that opens its body. A rule
without a docstring is an error, so a new rule cannot go undocumented.

Rules defined in a loop (``rule:`` with a ``name:`` computed from the loop variable) exist only
for the configurations that ask for them; they are documented once, with the names they take.
The only such rules are the fine-tuning packs (``finetune.pack``), named by
:data:`taufm.finetune.packs.PACK_RULES`.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

from taufm.config_docs import markdown_prose
from taufm.errors import TaufmError
from taufm.finetune.packs import PACK_RULES

REGENERATE_COMMAND = "taufm rule-docs --output docs/rules.md"

_INCLUDE = re.compile(r'^include:\s*"([^"]+)"', re.MULTILINE)
_RULE = re.compile(r"^(?P<indent>[ \t]*)rule(?:[ \t]+(?P<name>\w+))?[ \t]*:[ \t]*(?:#.*)?$", re.MULTILINE)
_DOCSTRING = re.compile(r'\s*(?P<quote>"""|\'\'\')(?P<text>.*?)(?P=quote)', re.DOTALL)
_NAME_DIRECTIVE = re.compile(r"^[ \t]+name:[ \t]*\n[ \t]+(?P<expr>.+)$|^[ \t]+name:[ \t]*(?P<inline>\S.*)$", re.MULTILINE)



@dataclass(frozen=True)
class GeneratedNames:
    """The names a loop-defined rule takes, and when it takes each."""

    names: tuple[str, ...]
    note: str


# Loop-defined rules, by the expression of their ``name:`` directive.
GENERATED_RULE_NAMES = {
    "family.rule": GeneratedNames(
        names=(PACK_RULES["grid"], f"{PACK_RULES['grid']}_<backbone>", PACK_RULES["part"], PACK_RULES["ablations"]),
        note=(
            "Defined in a loop: one rule per pack family that `finetune.pack` asks for "
            "(taufm.finetune.packs). `finetune_pack` packs the grid's backbone strategies (with "
            "`strategies` in `finetune.pack.by`: those of tokens-ntp, and `finetune_pack_<backbone>` "
            "those of each other backbone, its `-` written `_`), `finetune_pack_part` the ParT "
            "baseline's cells and `finetune_pack_ablations` the ablations'. With `finetune.pack.by: []` "
            "there is none, and the `finetune` rule makes every cell."
        ),
    ),
}


@dataclass(frozen=True)
class RuleDoc:
    names: tuple[str, ...]  # one name; the names a loop-defined rule takes
    source: str  # the file, relative to the repository root
    docstring: str
    generated: GeneratedNames | None = None  # set for a loop-defined rule


def _docstring_after(text: str, position: int, where: str) -> str:
    match = _DOCSTRING.match(text, position)
    if match is None:
        raise TaufmError(f"{where}: the rule has no docstring (a triple-quoted string opening its body)")
    return inspect.cleandoc(ast.literal_eval(match.group(0).strip()))


def rules_in(path: Path, root: Path) -> list[RuleDoc]:
    """The rules defined in one Snakefile or rule file, in their order there; ``root``: the
    directory the sources are named relative to."""
    text = path.read_text()
    source = path.resolve().relative_to(root.resolve()).as_posix()
    docs = []
    for match in _RULE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        where = f"{source}:{line}"
        docstring = _docstring_after(text, match.end(), where)
        name = match.group("name")
        if name is not None:
            docs.append(RuleDoc((name,), source, docstring))
            continue
        directive = _NAME_DIRECTIVE.search(text, match.end())
        expression = directive and (directive.group("expr") or directive.group("inline")).strip()
        if expression not in GENERATED_RULE_NAMES:
            raise TaufmError(f"{where}: a rule named by {expression!r}; list the names it takes in taufm.rule_docs.GENERATED_RULE_NAMES")
        generated = GENERATED_RULE_NAMES[expression]
        docs.append(RuleDoc(generated.names, source, docstring, generated=generated))
    return docs


def workflow_files(snakefile: Path) -> list[Path]:
    """The Snakefile and the files it includes, in the order it includes them."""
    included = [snakefile.parent / name for name in _INCLUDE.findall(snakefile.read_text())]
    return [snakefile, *included]


def workflow_rules(snakefile: str | Path = "workflow/Snakefile") -> list[RuleDoc]:
    """Every rule of the workflow whose main file is ``snakefile``, sources named relative to
    its directory."""
    snakefile = Path(snakefile)
    return [doc for path in workflow_files(snakefile) for doc in rules_in(path, snakefile.parent)]


def render_rule_docs(rules: list[RuleDoc]) -> str:
    """Markdown: an index of the rules, then each rule's docstring, grouped by the file it is in."""
    lines = [
        "# Rules",
        "",
        f"<!-- Generated from the rules' docstrings by `{REGENERATE_COMMAND}`; do not edit. -->",
        "",
        "Every rule of the workflow, from its docstring, in the order the Snakefile includes the rule "
        "files. Each rule but `all` runs one `taufm` subcommand, with its log under "
        "`results/logs/<stage>/` and its run time and memory under `results/benchmarks/<stage>/`. "
        "The configuration keys: [`config/README.md`](../config/README.md).",
        "",
        "| Rule | Defined in |",
        "| --- | --- |",
    ]
    for doc in rules:
        names = ", ".join(f"[`{name}`](#{_anchor(doc.names[0])})" if i == 0 else f"`{name}`" for i, name in enumerate(doc.names))
        lines.append(f"| {names} | `{doc.source}` |")
    lines.append("")
    current_source = None
    for doc in rules:
        if doc.source != current_source:
            current_source = doc.source
            lines += [f"## `{doc.source}`", ""]
        lines += [f"### `{doc.names[0]}`", ""]
        lines += [_paragraphs(doc.docstring), ""]
        if doc.generated is not None:
            lines += [doc.generated.note, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _paragraphs(docstring: str) -> str:
    """A docstring's paragraphs, each on one line (Markdown would join them anyway)."""
    return "\n\n".join(markdown_prose(paragraph) for paragraph in re.split(r"\n\s*\n", docstring))


def _anchor(name: str) -> str:
    """GitHub's anchor of a heading that is just ``name`` in a code span."""
    return "".join(ch for ch in name.lower() if ch.isalnum() or ch in "-_")


def write_rule_docs(output: str | Path, snakefile: str | Path = "workflow/Snakefile") -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_rule_docs(workflow_rules(snakefile)))
    return output
