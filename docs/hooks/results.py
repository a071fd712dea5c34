"""MkDocs hook: every table of figures on the site is rendered from a checked-in results file.

A page never types a measured number. It names a results file in docs/results/ and the command
that writes it; this hook renders the table (or one value) from the file, with a line giving the
command, commit, machine and date from the file's provenance block (src/mesascope/provenance.py):

    {{ results_table("demo-headline.json", command="mesascope replicate ...",
                     rows="mean", columns={"figure": "@key", "mean over seeds": "value"}) }}
    {{ results_value("demo-headline.json", "mean.helpful_accuracy", command="mesascope replicate ...") }}
    {{ results_index() }}   every results file the pages name: its command, pages and status
    {{ schema_files() }}    links to the JSON Schemas in docs/schema/

Arguments are Python literals (read with ast.literal_eval, never run). A path is dot-separated keys
into the JSON ("" is the whole file; an integer indexes a list, -1 is its last item). `rows` names
a dict (one row per key) or a list (one row per item); `columns` maps a header to a path inside a
row ("@key": the row's key or index), or to [path, format spec] (["lr", "g"]); without `columns`,
the first row's scalars and measurements. `where` keeps the rows whose paths equal the given
values, `keys` those whose key matches a regular expression; `digits` (default 3) rounds floats. Placeholders in code blocks and code spans are left be.

A file that does not exist yet renders as a "not yet regenerated: run CMD" note, which does not
fail the build. An existing file fails the build when a path resolves in none of its rows, when it
has no provenance block (command, commit, machine), or when that block names another command than
the page does (two pages naming different commands for one file fail it too).

`python docs/hooks/results.py README.md` re-renders the README's results blocks in place: a line
`<!-- {{ results_table(...) }} -->`, the rendered table, and a closing `<!-- /results -->`.
"""

from __future__ import annotations

import ast
import html
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

DOCS = Path(__file__).resolve().parents[1]
RESULTS = DOCS / "results"
SCHEMAS = DOCS / "schema"
PLACEHOLDER = re.compile(r"\{\{\s*(results_table|results_value|results_index|schema_files)\((.*?)\)\s*\}\}", re.S)
README_BLOCK = re.compile(r"(<!-- (\{\{.*?\}\}) -->\n)(.*?)(<!-- /results -->)", re.S)
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
MISSING = object()


class ResultsError(Exception):
    """A placeholder that cannot be rendered from an existing results file."""


def split_fences(markdown: str) -> Iterator[tuple[bool, str]]:
    """(inside a fenced code block, text) chunks, in order: code is shown as written, never rendered."""
    fence, chunk = None, []
    for line in markdown.splitlines(keepends=True):
        m = FENCE.match(line)
        if fence is None and m:
            if chunk:
                yield False, "".join(chunk)
            fence, chunk = m.group(1), [line]
        elif fence and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                and not line.strip()[len(m.group(1)):]:
            yield True, "".join(chunk + [line])
            fence, chunk = None, []
        else:
            chunk.append(line)
    if chunk:
        yield fence is not None, "".join(chunk)


def parse_call(args: str) -> tuple[list, dict]:
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        return [ast.literal_eval(a) for a in call.args], {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ResultsError(f"placeholder arguments must be Python literals: ({args.strip()}): {e}") from None


def placeholders(markdown: str) -> Iterator[tuple[int, int, str, list, dict]]:
    """Every placeholder outside code: (start, end, function name, args, kwargs)."""
    offset = 0
    for code, chunk in split_fences(markdown):
        if not code:
            spans = [m.span() for m in CODE_SPAN.finditer(chunk)]
            for m in PLACEHOLDER.finditer(chunk):
                if not any(a <= m.start() < b for a, b in spans):
                    yield offset + m.start(), offset + m.end(), m.group(1), *parse_call(m.group(2))
        offset += len(chunk)


def get(data: Any, path: str) -> Any:
    for key in str(path).split(".") if path else []:
        if isinstance(data, list) and re.fullmatch(r"-?\d+", key) and -len(data) <= int(key) < len(data):
            data = data[int(key)]
        elif isinstance(data, dict) and key in data:
            data = data[key]
        else:
            raise ResultsError(f"no {key!r} at path {path!r}")
    return data


def lookup(row: Any, path: str) -> Any:
    try:
        return get(row, path)
    except ResultsError:
        return MISSING


def fmt(v: Any, digits: int = 3, spec: str | None = None) -> str:
    """One cell: a measurement as `value [lo, hi]`, per-seed values as `seed: value, ...`."""
    if v is MISSING or v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return format(v, spec) if spec else str(v) if isinstance(v, int) else f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)) and v and all(x is None for x in v):  # an undefined interval
        return "—"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"[{fmt(v[0], digits, spec)}, {fmt(v[1], digits, spec)}]"
    if isinstance(v, dict) and "value" in v:
        if v["value"] is None:  # undefined (e.g. precision with nothing flagged): no interval either
            return "—"
        ci = v.get("ci")
        return fmt(v["value"], digits, spec) + (f" {fmt(ci, digits, spec)}" if ci else "")
    if isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()):
        return ", ".join(f"{k}: {fmt(x, digits, spec)}" for k, x in v.items())
    if isinstance(v, list) and all(isinstance(x, (int, float, str)) for x in v):
        return ", ".join(fmt(x, digits, spec) for x in v)
    text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    # A string cell may be a model's output (a red team's best string): escaped, so it renders as text, never as HTML.
    return html.escape(text, quote=False).replace("|", r"\|").replace("\n", " ")


def table(data: Any, rows: str = "", columns: dict[str, Any] | None = None, where: dict | None = None,
          digits: int = 3, keys: str | None = None) -> str:
    found = get(data, rows)
    if not isinstance(found, (dict, list)):
        raise ResultsError(f"rows={rows!r} is neither a dict nor a list")
    items = list(found.items() if isinstance(found, dict) else enumerate(found))
    items = [(k, r) for k, r in items if all(lookup(r, p) == want for p, want in (where or {}).items())
             and (keys is None or re.fullmatch(keys, str(k)))]
    if not items:
        raise ResultsError(f"no rows at {rows!r}" + (f" where {where}" if where else "")
                           + (f" with keys matching {keys!r}" if keys else ""))
    if columns is None:
        first = items[0][1]
        keys = ([str(i) for i in range(len(first))] if isinstance(first, list) else
                [k for k, v in first.items() if not isinstance(v, (dict, list)) or "value" in v]
                if isinstance(first, dict) else [""])
        columns = {"": "@key", **{k or "value": k for k in keys}}
    specs = [(c, None) if isinstance(c, str) else tuple(c) for c in columns.values()]
    cells = [[str(key) if path == "@key" else lookup(row, path) for path, _ in specs] for key, row in items]
    for i, header in enumerate(columns):
        if all(row[i] is MISSING for row in cells):
            raise ResultsError(f"column {header!r}: no row has {specs[i][0]!r}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v, digits, spec) for v, (_, spec) in zip(row, specs)) + " |" for row in cells]
    return "\n".join(lines)


def load(name: str) -> dict | None:
    path = RESULTS / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"docs/results/{name} is not JSON: {e}") from None


def source_line(name: str, data: dict, command: str, link: str) -> str:
    """Where a table's numbers come from; checks the provenance block and that the page's command wrote it."""
    p = data.get("provenance")
    if not isinstance(p, dict) or not all(p.get(k) for k in ("command", "commit", "machine")):
        raise ResultsError(f"docs/results/{name} has no provenance block with command, commit and machine")
    if shlex.split(p["command"]) != shlex.split(command):
        raise ResultsError(f"docs/results/{name} was written by `{p['command']}`, but the page says `{command}`: "
                           "rerun the page's command, or name the command that wrote the file")
    m = p["machine"]
    machine = ", ".join(str(x) for x in (m.get("cpu"), m.get("cpus") and f"{m['cpus']} CPUs",
                                         m.get("python") and f"Python {m['python']}",
                                         m.get("torch") and f"torch {m['torch']}", m.get("device")) if x)
    dirty = " with uncommitted changes to src/mesascope" if p.get("dirty") else ""
    return (f"*Source: [`{name}`]({link}), written by `{p['command']}` at commit `{p['commit']}`{dirty} "
            f"on {machine or 'an unrecorded machine'}, {str(p.get('created', 'date not recorded'))[:10]}.*")


def not_yet(name: str, command: str, style: str, inline: bool) -> str:
    if inline:
        return f"*(not yet regenerated: run `{command}`)*"
    if style == "github":
        return f"> **Not yet regenerated.** Run `{command}` to write `docs/results/{name}`; this table is rendered from it."
    return (f'!!! warning "Not yet regenerated"\n    `docs/results/{name}` is not checked in yet. '
            f"Run `{command}` to write it; this table is rendered from it.")


def render(fn: str, args: list, kw: dict, page: str, style: str = "mkdocs") -> str:
    here = os.path.dirname(page) or "."
    if fn == "results_index":
        return results_index(here)
    if fn == "schema_files":
        return schema_files(here)
    if not args or "command" not in kw:
        raise ResultsError(f"{fn} needs the results file's name and command=")
    name, command = args[0], kw.pop("command")
    data = load(name)
    if data is None:
        return not_yet(name, command, style, inline=fn == "results_value")
    link = f"docs/results/{name}" if style == "github" else os.path.relpath(f"results/{name}", here)
    source = source_line(name, data, command, link)
    if fn == "results_value":
        return fmt(get(data, args[1]), kw.get("digits", 3), kw.get("spec"))
    return table(data, **kw) + "\n\n" + source


def expand(markdown: str, page: str, style: str = "mkdocs") -> str:
    out, last = [], 0
    for start, end, fn, args, kw in placeholders(markdown):
        try:
            text = render(fn, args, kw, page, style)
        except ResultsError as e:
            raise ResultsError(f"{page}: {markdown[start:end][:70]}...: {e}") from None
        out += [markdown[last:start], text if fn == "results_value" else f"\n\n{text}\n\n"]
        last = end
    return "".join(out) + markdown[last:]


def named_files() -> dict[str, dict[str, set]]:
    """Every results file the pages name: {file: {"commands": {...}, "pages": {...}}}."""
    found: dict[str, dict[str, set]] = {}
    for md in sorted(DOCS.rglob("*.md")):
        for *_, fn, args, kw in placeholders(md.read_text(encoding="utf-8")):
            if fn in ("results_table", "results_value") and args:
                entry = found.setdefault(args[0], {"commands": set(), "pages": set()})
                entry["commands"].add(kw.get("command", ""))
                entry["pages"].add(md.relative_to(DOCS).as_posix())
    return found


def results_index(here: str) -> str:
    lines = ["| results file | command that writes it | shown on | status |", "|---|---|---|---|"]
    named = named_files()
    for name in sorted(set(named) | {p.name for p in RESULTS.glob("*.json")}):
        entry = named.get(name, {"commands": set(), "pages": set()})
        if len(entry["commands"]) > 1:
            raise ResultsError(f"docs/results/{name} is given different commands: {sorted(entry['commands'])}")
        p = (load(name) or {}).get("provenance") or {}
        status = f"commit `{p.get('commit', '?')}`, {str(p.get('created', '?'))[:10]}" if load(name) else "not yet regenerated"
        pages = ", ".join(f"[{pg}]({os.path.relpath(pg, here)})" for pg in sorted(entry["pages"]))
        commands = "<br>".join(f"`{c}`" for c in sorted(entry["commands"]))
        lines.append(f"| `{name}` | {commands or '—'} | {pages or 'no page'} | {status} |")
    return "\n".join(lines)


def schema_files(here: str) -> str:
    files = sorted(SCHEMAS.glob("*.json"))
    if not files:
        return '!!! note "Not yet published"\n    No JSON Schema is checked in yet; `mesascope schema` writes them to docs/schema/.'
    return "\n".join(f"- [`{f.name}`]({os.path.relpath(f'schema/{f.name}', here)})" for f in files)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    try:
        return expand(markdown, page.file.src_uri)
    except ResultsError as e:
        from mkdocs.exceptions import PluginError

        raise PluginError(str(e)) from None


def render_readme(text: str) -> str:
    """The README with each results block re-rendered from the placeholder in its opening comment."""
    return README_BLOCK.sub(lambda m: m.group(1) + expand(m.group(2), "README.md", "github").strip() + "\n"
                            + m.group(4), text)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        readme = Path(arg)
        readme.write_text(render_readme(readme.read_text(encoding="utf-8")), encoding="utf-8")
