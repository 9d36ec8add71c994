"""edgeci.ci.declarative: the Declarative model Jenkins checks when a build starts, checked on the source.

The shared library and the Jenkinsfile pass; each mistake below, made in a copy of the library, is one
Jenkins rejects (WorkflowScript: N: …) and the validator must name with its line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeci.ci.declarative import stage_names, validate_file, validate_text
from edgeci.cli import main

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "pipelines" / "jenkins" / "vars" / "edgePipeline.groovy"
JENKINSFILE = ROOT / "Jenkinsfile"


def test_the_library_and_the_jenkinsfile_pass() -> None:
    assert validate_file(LIBRARY) == []
    assert validate_file(JENKINSFILE) == []
    # and the validator did see the pipeline: every stage, nested ones included
    assert stage_names(LIBRARY.read_text()) == ["Candidates", "Plan", "Lint", "Compose", "Push", "Stage",
                                                "Boot test", "Approve", "Promote"]


def _mutated(old: str, new: str) -> str:
    text = LIBRARY.read_text()
    assert text.count(old) >= 1, old
    return text.replace(old, new, 1)


OPTIONS = "            skipStagesAfterUnstable()\n"
PARAMETER = "            booleanParam(name: 'REBUILD_ALL', defaultValue: false,"
LINT_WHEN = ("                        when { expression { return !targets.isEmpty() } }\n"
             "                        steps {\n                            sh \"${cfg.edgeci} lint\"")
PROMOTE_STAGE = "            stage('Promote') {\n"

MISTAKES = [
    # the three the issue names
    ("unknown option", OPTIONS, OPTIONS + "            noSuchOption()\n", "'noSuchOption' is not a valid option"),
    ("unknown stage section", "                    stage('Lint') {\n",
     "                    stage('Lint') {\n                        notADirective 'x'\n",
     "'notADirective' is not a directive of a stage"),
    ("misspelt parameter", PARAMETER, PARAMETER.replace("booleanParam", "booleanParamz"),
     "'booleanParamz' is not a valid parameter type (did you mean 'booleanParam'?)"),
    # and more kinds
    ("unknown trigger", "            cron(promoteBranch ? cfg.cron : '')",
     "            cronn(promoteBranch ? cfg.cron : '')", "'cronn' is not a valid trigger (did you mean 'cron'?)"),
    ("unknown when condition", "                        changeset 'blueprints/**'",
     "                        changeSet 'blueprints/**'", "'changeSet' is not a when condition"),
    ("unknown post condition", "        post {\n            cleanup {", "        post {\n            cleanUp {",
     "'cleanUp' is not a post condition (did you mean 'cleanup'?)"),
    ("unknown top-level section", "        agent none\n        options {",
     "        agent none\n        stepz { echo 'x' }\n        options {",
     "'stepz' is not a section of a Declarative pipeline"),
    ("missing agent", "        agent none\n        options {", "        options {",
     "the pipeline has no 'agent' section"),
    ("duplicate section", "        triggers {",
     "        options { timestamps() }\n        triggers {", "duplicate 'options' in the pipeline"),
    ("stage with steps and stages", "                    stage('Plan') {\n",
     "                    stage('Plan') {\n                        stages { stage('Inner') { steps { echo 'x' } } }\n",
     "stage 'Plan' must have exactly one of steps, stages, parallel or matrix (it has stages, steps)"),
    ("stage without a body", PROMOTE_STAGE, "            stage('Empty') { agent none }\n" + PROMOTE_STAGE,
     "stage 'Empty' must have exactly one of steps, stages, parallel or matrix (it has none)"),
    ("duplicate stage name", PROMOTE_STAGE, "            stage('Lint') { steps { echo 'again' } }\n" + PROMOTE_STAGE,
     "duplicate stage name 'Lint'"),
    ("input without message", "                    message \"Promote to production?\\n${approvalText(targets)}\"\n",
     "", "input has no message"),
    ("unknown input directive", "                    ok 'Promote'", "                    okay 'Promote'",
     "'okay' is not an input directive (did you mean 'ok'?)"),
    ("unknown agent type", "                agent { label cfg.agentLabel }",
     "                agent { lable cfg.agentLabel }", "'lable' is not an agent type (did you mean 'label'?)"),
    ("stage option that is pipeline-only", "                options { timeout(time: cfg.approvalTimeoutHours",
     "                options { skipStagesAfterUnstable()\n timeout(time: cfg.approvalTimeoutHours",
     "'skipStagesAfterUnstable' is not a valid stage option"),
    ("duplicate steps", LINT_WHEN,
     LINT_WHEN.replace("steps {\n", "steps {\n                        }\n                        steps {\n"),
     "duplicate 'steps' in stage 'Lint'"),
    ("not with two conditions", "                        triggeredBy 'TimerTrigger'",
     "                        not { branch 'a'; branch 'b' }", "not takes exactly one condition"),
    ("stray brace", "        post {\n            cleanup {", "        post {\n            cleanup {{",
     "expected a section or directive name, not '{'"),
]


@pytest.mark.parametrize(("kind", "old", "new", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_jenkins_rejects_is_reported_with_its_line(kind: str, old: str, new: str, message: str) -> None:
    text = _mutated(old, new)
    findings = validate_text(text, "edgePipeline.groovy")
    assert findings, kind
    assert any(message in f.message for f in findings), [f.line_text() for f in findings]
    # where the mistake is: at or after the first changed line
    changed = next(i for i, (a, b) in enumerate(zip(text.splitlines(), LIBRARY.read_text().splitlines(),
                                                    strict=False)) if a != b) + 1
    assert any(f.line >= changed - 12 for f in findings), [f.line_text() for f in findings]


def test_strings_comments_and_slashy_regexes_do_not_confuse_the_parser() -> None:
    text = '''
// pipeline { this is a comment }
def x = /[a-z]{3}\\/x/   /* pipeline { nor this } */
pipeline {
    agent { label "a ${[1, 2].collect { "}" }.join('{')}" }
    stages {
        stage("quoted } brace") {
            steps { sh """echo '}' ${"{"}""" }
        }
    }
}
'''
    assert validate_text(text) == []
    assert stage_names(text) == ["quoted } brace"]


def test_a_stage_with_empty_steps_is_reported() -> None:
    (finding,) = validate_text("pipeline {\n agent any\n stages { stage('a') { steps { } } }\n}\n")
    assert finding.message == "no steps in stage 'a': Jenkins requires at least one" and finding.line == 3


def test_an_unclosed_block_is_reported() -> None:
    (finding,) = validate_text("pipeline {\n agent any\n stages { stage('a') { steps { echo 'x' } }\n}\n")
    assert "unexpected end of file (a '{' or '(' is not closed)" in finding.message


def test_empty_stages_and_an_environment_that_is_not_an_assignment() -> None:
    findings = validate_text("pipeline {\n agent any\n environment { FOO 'x' }\n stages { }\n}\n")
    messages = [f.message for f in findings]
    assert any("environment entries are NAME = value" in m for m in messages)
    assert any("no stages in the stages block" in m for m in messages)
    assert [f.line for f in findings] == [3, 4]


def test_jenkins_lint_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "Jenkinsfile"
    good.write_text("pipeline {\n  agent any\n  stages { stage('a') { steps { echo 'x' } } }\n}\n")
    bad = tmp_path / "Bad.groovy"
    bad.write_text("pipeline {\n  agent any\n  options { noSuchOption() }\n"
                   "  stages { stage('a') { steps { echo 'x' } } }\n}\n")
    assert main(["jenkins", "lint", str(good)]) == 0
    out = capsys.readouterr()
    assert "1 file, no findings" in out.out
    assert main(["jenkins", "lint", str(good), str(bad)]) == 1
    out = capsys.readouterr()
    assert f"{bad}:3:13: 'noSuchOption' is not a valid option" in out.out
