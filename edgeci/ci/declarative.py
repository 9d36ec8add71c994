"""A validator of Jenkins Declarative Pipeline: what Jenkins checks when a build starts, checked before.

Jenkins parses `pipeline { … }` into its Declarative model and rejects the build (WorkflowScript: N: …) for
an unknown section, directive, option, trigger, parameter, `when` condition or `post` condition, a
required one missing, one given twice, or a stage without exactly one of steps/stages/parallel/matrix.
This module does the same on the source text, without Jenkins: a small Groovy tokenizer (comments,
'…', "…" with ${…}, triple-quoted and slashy strings) and a parser of the Declarative block structure.
Steps inside `steps { }`, `script { }` and `expression { }` bodies are Groovy and not checked here.

The grammar followed is Declarative Pipeline as of Jenkins 2.440 LTS (Pipeline: Declarative plugin 2.2x)
with the plugins pipelines/jenkins/README.md lists: options, triggers, parameters, tools and agent types
that other plugins contribute are only known when listed in the tables below.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

JENKINS_GRAMMAR = "Declarative Pipeline of Jenkins 2.440 LTS (pipeline-model-definition 2.2x)"

TOP_SECTIONS = ("agent", "environment", "options", "parameters", "triggers", "tools", "libraries", "stages", "post")
REQUIRED_TOP = ("agent", "stages")
STAGE_SECTIONS = ("agent", "environment", "tools", "input", "options", "when", "steps", "stages", "parallel",
                  "matrix", "post", "failFast")
STAGE_BODIES = ("steps", "stages", "parallel", "matrix")
PIPELINE_OPTIONS = frozenset({
    # job properties
    "buildDiscarder", "disableConcurrentBuilds", "overrideIndexTriggers", "durabilityHint", "copyArtifactPermission",
    "rateLimitBuilds", "githubProjectProperty",
    # Declarative options
    "checkoutToSubdirectory", "disableRestartFromStage", "disableResume", "newContainerPerStage",
    "parallelsAlwaysFailFast", "preserveStashes", "quietPeriod", "skipDefaultCheckout", "skipStagesAfterUnstable",
    # block-scoped steps usable as options (wrappers)
    "timeout", "retry", "timestamps", "lock", "ansiColor",
})
STAGE_OPTIONS = frozenset({"skipDefaultCheckout", "timeout", "retry", "timestamps", "lock", "ansiColor"})
TRIGGERS = frozenset({"cron", "pollSCM", "upstream", "githubPush"})
PARAMETERS = frozenset({"string", "text", "booleanParam", "choice", "password", "credentials", "run",
                        "base64File", "stashedFile"})
TOOLS = frozenset({"maven", "jdk", "gradle", "ant", "nodejs", "go", "git"})
WHEN_CONDITIONS = frozenset({"branch", "buildingTag", "changelog", "changeset", "changeRequest", "environment",
                             "equals", "expression", "tag", "triggeredBy", "not", "allOf", "anyOf"})
WHEN_MODIFIERS = frozenset({"beforeAgent", "beforeInput", "beforeOptions"})
POST_CONDITIONS = frozenset({"always", "changed", "fixed", "regression", "aborted", "failure", "success",
                             "unstable", "unsuccessful", "cleanup", "notBuilt"})
AGENT_BARE = frozenset({"any", "none"})
AGENT_TYPES = frozenset({"label", "node", "docker", "dockerfile", "kubernetes"})
INPUT_DIRECTIVES = frozenset({"message", "id", "ok", "submitter", "submitterParameter", "parameters"})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    column: int
    message: str

    def line_text(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


# ---------------------------------------------------------------------------------------------
# Tokens


@dataclass
class Token:
    kind: str  # ident, string, number, op
    text: str
    line: int
    column: int
    newline_before: bool = False


class SyntaxProblem(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


_OPERATORS = sorted(["==~", "=~", "==", "!=", "<=", ">=", "&&", "||", "?:", "?.", "*.", "->", "<<", ">>", "++",
                     "--", "+=", "-=", "*=", "/=", "**", "..", "::"], key=len, reverse=True)
# after these a '/' starts a slashy string, not a division
_SLASHY_AFTER = {"(", ",", "=", "==~", "=~", "==", "!=", "[", "{", "!", "&&", "||", "?", ":", "return", "+", "->"}


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text, self.n = text, len(text)
        self.i, self.line, self.col = 0, 1, 1

    def advance(self, count: int) -> None:
        for ch in self.text[self.i:self.i + count]:
            if ch == "\n":
                self.line, self.col = self.line + 1, 1
            else:
                self.col += 1
        self.i += count

    def string_body(self, quote: str, sline: int, scol: int, *, interpolate: bool) -> None:
        """Move past a string's body and closing quote; ${…} in GStrings may hold braces and strings."""
        text, n = self.text, self.n
        while True:
            i = self.i
            if i >= n or (len(quote) == 1 and text[i] == "\n"):
                raise SyntaxProblem(sline, scol, f"unterminated string starting with {quote}")
            if text.startswith(quote, i):
                self.advance(len(quote))
                return
            if text[i] == "\\":
                self.advance(2)
                continue
            if interpolate and text.startswith("${", i):
                self.advance(2)
                depth = 1
                while depth:
                    if self.i >= n:
                        raise SyntaxProblem(sline, scol, "unterminated ${ in a string")
                    c = text[self.i]
                    if c in "'\"":
                        self.advance(1)
                        self.string_body(c, sline, scol, interpolate=c == '"')
                        continue
                    depth += {"{": 1, "}": -1}.get(c, 0)
                    self.advance(1)
                continue
            self.advance(1)


def tokenize(text: str) -> list[Token]:
    lx = _Lexer(text)
    tokens: list[Token] = []
    n = len(text)
    newline = True

    def add(kind: str, start: int, sline: int, scol: int) -> None:
        nonlocal newline
        tokens.append(Token(kind, text[start:lx.i], sline, scol, newline))
        newline = False

    while lx.i < n:
        i = lx.i
        ch = text[i]
        if ch == "\n":
            newline = True
            lx.advance(1)
            continue
        if ch in " \t\r\f":
            lx.advance(1)
            continue
        if text.startswith("\\\n", i):  # line continuation
            lx.advance(2)
            continue
        if text.startswith("//", i):
            end = text.find("\n", i)
            lx.advance((end if end >= 0 else n) - i)
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise SyntaxProblem(lx.line, lx.col, "unterminated /* comment")
            lx.advance(end + 2 - i)
            continue
        start, sline, scol = i, lx.line, lx.col
        if text.startswith("'''", i) or text.startswith('"""', i):
            quote = text[i:i + 3]
            lx.advance(3)
            lx.string_body(quote, sline, scol, interpolate=quote == '"""')
            add("string", start, sline, scol)
            continue
        if ch in "'\"":
            lx.advance(1)
            lx.string_body(ch, sline, scol, interpolate=ch == '"')
            add("string", start, sline, scol)
            continue
        if ch == "/" and (not tokens or tokens[-1].text in _SLASHY_AFTER):
            lx.advance(1)
            while True:
                if lx.i >= n or text[lx.i] == "\n":
                    raise SyntaxProblem(sline, scol, "unterminated slashy string")
                if text[lx.i] == "\\":
                    lx.advance(2)
                    continue
                lx.advance(1)
                if text[lx.i - 1] == "/":
                    break
            add("string", start, sline, scol)
            continue
        if ch.isalpha() or ch in "_$":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "_$"):
                j += 1
            lx.advance(j - i)
            add("ident", start, sline, scol)
            continue
        if ch.isdigit():
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "._"):
                j += 1
            lx.advance(j - i)
            add("number", start, sline, scol)
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), ch)
        lx.advance(len(op))
        add("op", start, sline, scol)
    return tokens


# ---------------------------------------------------------------------------------------------
# Declarative block structure


@dataclass
class Node:
    name: str
    token: Token
    args: list[Token] = field(default_factory=list)  # the argument tokens, parentheses excluded
    parens: bool = False
    block: list[Node] | None = None  # a `{ … }` parsed as Declarative
    body: list[Token] | None = None  # a `{ … }` kept as Groovy (steps, script, expression)
    assignment: bool = False

    @property
    def line(self) -> int:
        return self.token.line

    @property
    def column(self) -> int:
        return self.token.column


# bodies that are Groovy code, not Declarative
_GROOVY_BODIES = {"steps", "script", "expression"}
_CONTINUES = {"+", ",", "&&", "||", "?", ":", "(", "[", ".", "?.", "==", "!=", "=~", "==~"}


class Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            last = self.tokens[-1] if self.tokens else Token("op", "", 1, 1)
            raise SyntaxProblem(last.line, last.column, "unexpected end of file (a '{' or '(' is not closed)")
        self.i += 1
        return tok

    def balanced(self, open_: str, close: str) -> list[Token]:
        """Tokens between an opening bracket (already current) and its match."""
        first = self.take()
        depth, out = 1, list[Token]()
        pairs = {"(": ")", "[": "]", "{": "}"}
        stack = [close]
        while True:
            tok = self.take()
            if tok.kind == "op" and tok.text in pairs:
                stack.append(pairs[tok.text])
                depth += 1
            elif tok.kind == "op" and tok.text in (")", "]", "}"):
                expected = stack.pop()
                if tok.text != expected:
                    raise SyntaxProblem(tok.line, tok.column, f"'{tok.text}' where '{expected}' closes the "
                                                              f"'{open_}' of line {first.line}")
                depth -= 1
                if depth == 0:
                    return out
            out.append(tok)

    def block(self, groovy: bool = False) -> tuple[list[Node] | None, list[Token] | None]:
        if groovy:
            return None, self.balanced("{", "}")
        inner = self.balanced("{", "}")
        return Parser(inner).statements(), None

    def statements(self) -> list[Node]:
        nodes: list[Node] = []
        while self.peek() is not None:
            tok = self.take()
            if tok.kind == "op" and tok.text == ";":
                continue
            if tok.kind != "ident":
                raise SyntaxProblem(tok.line, tok.column, f"expected a section or directive name, not '{tok.text}'")
            node = Node(tok.text, tok)
            nxt = self.peek()
            if nxt is not None and nxt.kind == "op" and nxt.text == "=":
                self.take()
                node.assignment = True
                node.args = self.rest_of_statement()
            elif nxt is not None and nxt.kind == "op" and nxt.text == "(" and not nxt.newline_before:
                node.parens = True
                node.args = self.balanced("(", ")")
            elif nxt is not None and not nxt.newline_before and not (nxt.kind == "op" and nxt.text in "{}"):
                node.args = self.rest_of_statement()
            nxt = self.peek()
            if nxt is not None and nxt.kind == "op" and nxt.text == "{" and not (node.args and not node.parens
                                                                                  and nxt.newline_before):
                node.block, node.body = self.block(groovy=node.name in _GROOVY_BODIES)
            nodes.append(node)
        return nodes

    def rest_of_statement(self) -> list[Token]:
        out: list[Token] = []
        pairs = {"(": ")", "[": "]", "{": "}"}
        while True:
            tok = self.peek()
            if tok is None:
                return out
            if out and tok.newline_before and not (out[-1].kind == "op" and out[-1].text in _CONTINUES):
                return out
            if tok.kind == "op" and tok.text == ";":
                return out
            if tok.kind == "op" and tok.text == "}":
                return out
            if tok.kind == "op" and tok.text == "{" and out:
                return out  # a closure after command arguments: the caller takes it
            if tok.kind == "op" and tok.text in pairs:
                out.append(tok)
                out.extend(self.balanced(tok.text, pairs[tok.text]))
                continue
            out.append(self.take())


def find_pipelines(tokens: list[Token]) -> list[int]:
    """Indexes of `pipeline` identifiers that open a Declarative block."""
    out = []
    for k, tok in enumerate(tokens):
        nxt = tokens[k + 1] if k + 1 < len(tokens) else None
        prev = tokens[k - 1] if k else None
        if (tok.kind == "ident" and tok.text == "pipeline" and nxt is not None and nxt.text == "{"
                and (prev is None or prev.text not in (".", "def"))):
            out.append(k)
    return out


# ---------------------------------------------------------------------------------------------
# The model's rules


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Checker:
    def __init__(self, path: str) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self.stage_names: dict[str, int] = {}

    def error(self, at: Node | Token, message: str) -> None:
        tok = at.token if isinstance(at, Node) else at
        self.findings.append(Finding(self.path, tok.line, tok.column, message))

    def unique(self, nodes: list[Node], where: str, names: Iterable[str] | None = None) -> None:
        seen: dict[str, Node] = {}
        for node in nodes:
            if names is not None and node.name not in names:
                continue
            if node.name in seen:
                self.error(node, f"duplicate '{node.name}' in {where} (first on line {seen[node.name].line}): "
                                 "Jenkins allows it once")
            seen.setdefault(node.name, node)

    def needs_block(self, node: Node, what: str) -> list[Node] | None:
        if node.block is None:
            self.error(node, f"'{node.name}' in {what} needs a {{ … }} block")
        return node.block

    # -- pipeline ------------------------------------------------------------------------------
    def pipeline(self, node: Node) -> None:
        entries = self.needs_block(node, "the pipeline") or []
        for e in entries:
            if e.name not in TOP_SECTIONS:
                self.error(e, f"'{e.name}' is not a section of a Declarative pipeline{_suggest(e.name, TOP_SECTIONS)}"
                              f" (sections: {', '.join(TOP_SECTIONS)})")
        self.unique(entries, "the pipeline", TOP_SECTIONS)
        names = {e.name for e in entries}
        for required in REQUIRED_TOP:
            if required not in names:
                self.error(node, f"the pipeline has no '{required}' section: Jenkins requires one")
        for e in entries:
            {"agent": self.agent, "environment": self.environment, "options": lambda n: self.options(n, False),
             "parameters": self.parameters, "triggers": self.triggers, "tools": self.tools,
             "libraries": self.libraries, "stages": self.stages, "post": self.post}.get(e.name, lambda n: None)(e)

    # -- sections ------------------------------------------------------------------------------
    def agent(self, node: Node) -> None:
        if node.block is None:
            word = node.args[0].text if len(node.args) == 1 and node.args[0].kind == "ident" else ""
            if word not in AGENT_BARE:
                self.error(node, "agent needs 'any', 'none' or a block with one of "
                                 f"{', '.join(sorted(AGENT_TYPES))}")
            return
        if not node.block:
            self.error(node, "empty agent block: give one of " + ", ".join(sorted(AGENT_TYPES)))
        for e in node.block:
            if e.name not in AGENT_TYPES:
                self.error(e, f"'{e.name}' is not an agent type{_suggest(e.name, AGENT_TYPES)}")
        if len(node.block) > 1:
            self.error(node.block[1], "an agent block has exactly one agent type")

    def environment(self, node: Node) -> None:
        for e in self.needs_block(node, "environment") or []:
            if not e.assignment:
                self.error(e, f"environment entries are NAME = value, not '{e.name}'")
            elif not ENV_NAME.fullmatch(e.name):
                self.error(e, f"'{e.name}' is not a valid environment variable name")
            elif not e.args:
                self.error(e, f"environment variable {e.name} has no value")

    def _calls(self, node: Node, known: frozenset[str], what: str, where: str) -> list[Node]:
        entries = self.needs_block(node, where) or []
        for e in entries:
            if e.name not in known:
                self.error(e, f"'{e.name}' is not a valid {what}{_suggest(e.name, known)}")
            elif e.assignment:
                self.error(e, f"{what} '{e.name}' is a call, not an assignment")
        return entries

    def options(self, node: Node, stage: bool) -> None:
        known = STAGE_OPTIONS if stage else PIPELINE_OPTIONS
        entries = self._calls(node, known, "stage option" if stage else "option", "options")
        self.unique(entries, "options")

    def triggers(self, node: Node) -> None:
        entries = self._calls(node, TRIGGERS, "trigger", "triggers")
        self.unique(entries, "triggers")

    def parameters(self, node: Node) -> None:
        entries = self._calls(node, PARAMETERS, "parameter type", "parameters")
        seen: dict[str, Node] = {}
        for e in entries:
            text = " ".join(t.text for t in e.args)
            m = re.search(r"\bname\s*:\s*(['\"])(.*?)\1", text)
            if e.name in PARAMETERS and not m:
                self.error(e, f"parameter '{e.name}' has no name: (name: '…')")
            elif m and m.group(2) in seen:
                self.error(e, f"duplicate parameter '{m.group(2)}' (first on line {seen[m.group(2)].line})")
            elif m:
                seen[m.group(2)] = e

    def tools(self, node: Node) -> None:
        entries = self._calls(node, TOOLS, "tool type", "tools")
        self.unique(entries, "tools")

    def libraries(self, node: Node) -> None:
        for e in self.needs_block(node, "libraries") or []:
            if e.name != "lib":
                self.error(e, f"libraries holds lib('name@version') entries, not '{e.name}'")

    def post(self, node: Node) -> None:
        entries = self.needs_block(node, "post") or []
        if not entries:
            self.error(node, "empty post: give at least one condition (always, success, failure, …)")
        for e in entries:
            if e.name not in POST_CONDITIONS:
                self.error(e, f"'{e.name}' is not a post condition{_suggest(e.name, POST_CONDITIONS)}"
                              f" (conditions: {', '.join(sorted(POST_CONDITIONS))})")
            elif e.block is None:
                self.error(e, f"post condition '{e.name}' needs a {{ … }} block of steps")
        self.unique(entries, "post")

    # -- stages --------------------------------------------------------------------------------
    def stages(self, node: Node, where: str = "the pipeline") -> None:
        entries = self.needs_block(node, "stages") or []
        if not entries:
            self.error(node, f"no stages in the stages block of {where}: Jenkins requires at least one")
        for e in entries:
            if e.name != "stage":
                self.error(e, f"a stages block holds stage('name') {{ … }} entries, not '{e.name}'")
            else:
                self.stage(e)

    def stage(self, node: Node) -> None:
        if not node.parens or len(node.args) != 1 or node.args[0].kind != "string":
            self.error(node, "a stage needs its name: stage('name') { … }")
        else:
            name = node.args[0].text[1:-1]
            if name in self.stage_names:
                self.error(node, f"duplicate stage name '{name}' (first on line {self.stage_names[name]})")
            self.stage_names.setdefault(name, node.line)
        label = node.args[0].text if node.args else "?"
        entries = self.needs_block(node, f"stage {label}") or []
        for e in entries:
            if e.name not in STAGE_SECTIONS:
                self.error(e, f"'{e.name}' is not a directive of a stage{_suggest(e.name, STAGE_SECTIONS)}"
                              f" (directives: {', '.join(STAGE_SECTIONS)})")
        self.unique(entries, f"stage {label}", STAGE_SECTIONS)
        bodies = [e for e in entries if e.name in STAGE_BODIES]
        if len(bodies) != 1:
            self.error(node, f"stage {label} must have exactly one of steps, stages, parallel or matrix "
                             f"(it has {', '.join(b.name for b in bodies) or 'none'})")
        names = {e.name for e in entries}
        for e in entries:
            if e.name == "steps":
                if e.body is None:
                    self.error(e, "steps needs a { … } block")
                elif not e.body:
                    self.error(e, f"no steps in stage {label}: Jenkins requires at least one")
            elif e.name in ("stages", "parallel"):
                self.stages(e, f"stage {label}")
            elif e.name == "failFast" and "parallel" not in names:
                self.error(e, "failFast only applies to a stage with parallel")
            elif e.name == "agent":
                self.agent(e)
            elif e.name == "environment":
                self.environment(e)
            elif e.name == "tools":
                self.tools(e)
            elif e.name == "options":
                self.options(e, True)
            elif e.name == "when":
                self.when(e, names)
            elif e.name == "input":
                self.input(e)
            elif e.name == "post":
                self.post(e)

    def when(self, node: Node, stage_directives: set[str]) -> None:
        entries = self.needs_block(node, "when") or []
        conditions = [e for e in entries if e.name not in WHEN_MODIFIERS]
        if not conditions:
            self.error(node, "when has no condition")
        for e in entries:
            if e.name in WHEN_MODIFIERS:
                if e.name == "beforeInput" and "input" not in stage_directives:
                    self.error(e, "beforeInput in a stage without input")
                continue
            self.condition(e)
        self.unique(entries, "when", WHEN_MODIFIERS)

    def condition(self, node: Node) -> None:
        if node.name not in WHEN_CONDITIONS:
            self.error(node, f"'{node.name}' is not a when condition{_suggest(node.name, WHEN_CONDITIONS)}")
            return
        if node.name in ("not", "allOf", "anyOf"):
            nested = node.block
            if nested is None or not nested:
                self.error(node, f"{node.name} needs nested conditions in a {{ … }} block")
                return
            if node.name == "not" and len(nested) != 1:
                self.error(node, "not takes exactly one condition")
            for n in nested:
                self.condition(n)
        elif node.name == "expression":
            if node.body is None:
                self.error(node, "expression needs a { … } block returning true or false")
        elif not node.args:
            self.error(node, f"when condition '{node.name}' needs an argument")

    def input(self, node: Node) -> None:
        entries = self.needs_block(node, "input") or []
        for e in entries:
            if e.name not in INPUT_DIRECTIVES:
                self.error(e, f"'{e.name}' is not an input directive{_suggest(e.name, INPUT_DIRECTIVES)}")
            elif e.name == "parameters":
                self.parameters(e)
        if "message" not in {e.name for e in entries}:
            self.error(node, "input has no message: Jenkins requires one")
        self.unique(entries, "input")


def validate_text(text: str, path: str = "Jenkinsfile") -> list[Finding]:
    """Every Declarative mistake in `text` (empty: Jenkins would accept its structure)."""
    try:
        tokens = tokenize(text)
        starts = find_pipelines(tokens)
        checker = Checker(path)
        if not starts:
            if not re.search(r"@Library\s*\(", text):
                return [Finding(path, 1, 1, "no pipeline { … } block and no @Library: not a Declarative "
                                            "pipeline nor a call of a shared library step")]
            return []
        for k in starts:
            parser = Parser(tokens)
            parser.i = k
            (node,) = _one_statement(parser)
            checker.pipeline(node)
        return checker.findings
    except SyntaxProblem as e:
        return [Finding(path, e.line, e.column, e.message)]


def _one_statement(parser: Parser) -> list[Node]:
    tok = parser.take()
    node = Node(tok.text, tok)
    node.block, node.body = parser.block()
    return [node]


def stage_names(text: str) -> list[str]:
    """The stage names of the text's Declarative pipelines, in order (what the checker saw)."""
    tokens = tokenize(text)
    names: list[str] = []

    def walk(nodes: list[Node]) -> None:
        for n in nodes:
            if n.name == "stage" and n.args and n.args[0].kind == "string":
                names.append(n.args[0].text[1:-1])
            walk(n.block or [])

    for k in find_pipelines(tokens):
        parser = Parser(tokens)
        parser.i = k
        walk(_one_statement(parser))
    return names


def validate_file(path: str | Path) -> list[Finding]:
    p = Path(path)
    return validate_text(p.read_text(encoding="utf-8"), str(path))
