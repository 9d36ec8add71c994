"""The Jenkinsfile and the shared library (pipelines/jenkins) under Debian's groovy.

1. Syntax: both files compiled with a CompilationUnit to Phases.CONVERSION, so a syntax error fails the
   test with its line and column (a copy with a stray parenthesis proves the error is located).
2. Structure: the Jenkinsfile runs against a stub of the pipeline DSL — every step and directive is
   recorded in the order declarative would run it, with the stage it belongs to — for a push build, the
   monthly timer build and an UNSTABLE build, and the recorded tree is checked: stages, input with
   submitter and submitterParameter, milestone and lock('ostree-prod') only after the input, junit in
   every stage's post { always }, the cron trigger, the changeset condition, disableConcurrentBuilds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
JENKINSFILE = ROOT / "Jenkinsfile"
LIBRARY = ROOT / "pipelines" / "jenkins" / "vars" / "edgePipeline.groovy"
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
CHECKSUM_GATEWAY, CHECKSUM_KIOSK = "1" * 64, "2" * 64
BROKEN_FROM, BROKEN_TO = "milestone(ordinal: 2, label: 'promote')", "milestone(ordinal: 2, label: 'promote'))"
SETTINGS = ROOT / "pipelines" / "jenkins" / "resources" / "edgeci" / "settings.properties"

HARNESS = r'''import groovy.json.JsonOutput
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.MultipleCompilationErrorsException
import org.codehaus.groovy.control.Phases
import org.codehaus.groovy.control.customizers.ImportCustomizer
import org.codehaus.groovy.control.messages.SyntaxErrorMessage

// Stub DSL: every Jenkins step or directive the pipeline calls lands in methodMissing and is recorded
// as a tree (with the stage it ran in); closures are run in place, as declarative would run them.

// what `sh(returnStdout: true)` prints for the edgeci commands the library parses
class Canned {
    static final Map STDOUT = [
        'jenkins targets'   : 'gateway x86_64 https://ostree.example.com/prod/repo\nkiosk x86_64 -\n' +
                              'gateway-bootc x86_64 -\n',
        'jenkins candidates': 'gateway x86_64 ' + '1' * 64 + ' 1.0.1\nkiosk x86_64 ' + '2' * 64 + ' 2.0.0\n' +
                              'gateway-bootc x86_64 ' + '3' * 64 + ' 1.0.1\n',
    ]
}

class Recorder {
    static Recorder current
    Map root = [name: 'root', args: [], children: []]
    List stack = [root]
    List events = []
    Map env = [:]
    Closure library
    File resources

    static String show(Object o) {
        if (o instanceof Closure) return '{closure}'
        if (o instanceof Map) return '[' + o.collect { k, v -> "${k}: ${show(v)}" }.join(', ') + ']'
        if (o instanceof List) return '[' + o.collect { show(it) }.join(', ') + ']'
        return String.valueOf(o)
    }

    List stagePath() {
        stack.findAll { it.name == 'stage' }.collect { it.args[0] }
    }

    Object record(String name, List args) {
        Map node = [name: name, args: args.findAll { !(it instanceof Closure) }.collect { show(it) }, children: [],
                    stages: stagePath()]
        stack[-1].children << node
        events << [name: name, args: node.args, stages: node.stages, index: events.size()]
        return node
    }

    Object invoke(String name, Object[] argv) {
        List args = argv as List
        if (name == 'edgePipeline') return library.call(*args)
        Map node = record(name, args)
        Object result = null
        if (name == 'libraryResource') {
            result = new File(resources, String.valueOf(args[0])).text  // the library's resources/ directory
        } else if (name == 'sh') {
            Map opts = args[0] instanceof Map ? args[0] : [script: args[0]]
            if (opts.returnStdout) {
                result = Canned.STDOUT.find { k, v -> opts.script.contains(k) }?.value ?: ''
            }
        } else if (name == 'error') {
            throw new IllegalStateException("error step: ${args[0]}")
        }
        stack.push(node)
        try {
            if (name == 'parallel') {
                (args[0] as Map).each { k, v -> record('branch', [k]); v.call() }
            }
            args.findAll { it instanceof Closure }.each { c ->
                result = c.call()
            }
        } finally {
            stack.pop()
        }
        if (name == 'input') {
            Map param = node.children.find { it.name == 'submitterParameter' }
            if (param) env[param.args[0]] = 'name-from-the-input'  // what Jenkins would hand the pipeline
        }
        if (name == 'expression') node.result = result
        if (name == 'withEnv') node.env = args[0].collect { String.valueOf(it) }
        return result
    }
}

abstract class StubScript extends Script {
    def methodMissing(String name, Object args) {
        return Recorder.current.invoke(name, args as Object[])
    }
}

class StubBuild {
    boolean timer
    String result = 'SUCCESS'
    List getBuildCauses(String cls) {
        Recorder.current.record('currentBuild.getBuildCauses', [cls])
        boolean asked = cls == 'hudson.triggers.TimerTrigger$TimerTriggerCause'
        return (timer && asked) ? [[shortDescription: 'Started by timer']] : []
    }
    String getCurrentResult() { result }
    Object getPreviousSuccessfulBuild() { null }
}

Map syntax(File f) {
    def cu = new CompilationUnit(CompilerConfiguration.DEFAULT, null, new GroovyClassLoader())
    cu.addSource(f)
    long t0 = System.nanoTime()
    try {
        cu.compile(Phases.CONVERSION)
        return [file: f.path, ok: true, errors: [], ms: (System.nanoTime() - t0) / 1e6]
    } catch (MultipleCompilationErrorsException e) {
        List errors = e.errorCollector.errors.collect { m ->
            def c = (m instanceof SyntaxErrorMessage) ? m.cause : null
            [line: c?.line ?: 0, column: c?.startColumn ?: 0, message: c?.message ?: String.valueOf(m)]
        }
        return [file: f.path, ok: false, errors: errors, ms: (System.nanoTime() - t0) / 1e6]
    }
}

Map run(File jenkinsfile, File library, String variant) {
    boolean timer = variant == 'timer'
    def rec = new Recorder()
    Recorder.current = rec
    rec.resources = new File(library.parentFile.parentFile, 'resources')
    rec.env.putAll([NODE_NAME: 'agent-1', WORKSPACE: '/ws/edge-images', GIT_PREVIOUS_SUCCESSFUL_COMMIT: 'a' * 40])
    if (variant == 'branch') rec.env.BRANCH_NAME = 'feature-x'  // a multibranch job's other branch
    def build = new StubBuild(timer: timer, result: variant == 'unstable' ? 'UNSTABLE' : 'SUCCESS')
    def binding = new Binding([env: rec.env, params: [REBUILD_ALL: false], currentBuild: build,
                               none: 'none', any: 'any', scm: 'scm'])
    def config = new CompilerConfiguration()
    config.scriptBaseClass = StubScript.name
    // @Library('edgeci') needs an annotation type with a String[] value() allowed on a variable
    def imports = new ImportCustomizer()
    imports.addImport('Library', 'java.lang.SuppressWarnings')
    config.addCompilationCustomizers(imports)
    def shell = new GroovyShell(this.class.classLoader, binding, config)
    Script lib = shell.parse(library)
    rec.library = { Map cfg -> lib.invokeMethod('call', [cfg] as Object[]) }
    String failure = null
    try {
        shell.parse(jenkinsfile).run()
    } catch (IllegalStateException e) {
        failure = e.message
    }
    return [root: rec.root, events: rec.events, env: rec.env, error: failure]
}

// groovy harness.groovy JENKINSFILE LIBRARY BROKEN TAMPERED: one JVM for every check (each start costs ~1.5 s)
File jenkinsfile = new File(args[0]), library = new File(args[1]), broken = new File(args[2])
Map out = [checks: [jenkinsfile, library, broken].collect { syntax(it) }]
for (String variant : ['push', 'timer', 'unstable', 'branch']) {
    out[variant] = run(jenkinsfile, library, variant)
}
out['tampered'] = run(new File(args[3]), library, 'push')
println JsonOutput.toJson(out)
'''


@pytest.fixture(scope="module")
def groovy_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    groovy = shutil.which("groovy")
    assert groovy, "groovy is not installed: apt-get install groovy (the Makefile's apt target does)"
    work = tmp_path_factory.mktemp("groovy")
    harness = work / "harness.groovy"
    harness.write_text(HARNESS)
    text = LIBRARY.read_text()
    assert BROKEN_FROM in text
    broken = work / "edgePipeline-broken.groovy"
    broken.write_text(text.replace(BROKEN_FROM, BROKEN_TO, 1))
    env = {**os.environ, "JAVA_HOME": JAVA_HOME if Path(JAVA_HOME).is_dir() else os.environ.get("JAVA_HOME", "")}
    # a branch that tries to choose its own approvers
    tampered = work / "JenkinsfileTampered"
    tampered.write_text(JENKINSFILE.read_text().replace("agentLabel: 'edgeci',",
                                                        "agentLabel: 'edgeci', submitter: 'mallory',"))
    assert "mallory" in tampered.read_text()
    r = subprocess.run([groovy, str(harness), str(JENKINSFILE), str(LIBRARY), str(broken), str(tampered)],
                       capture_output=True,
                       text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, f"groovy harness failed:\n{r.stderr[-4000:]}"
    data: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    data["broken_text"] = broken.read_text()
    return data


def _nodes(node: dict[str, Any], name: str) -> Iterator[dict[str, Any]]:
    if node["name"] == name:
        yield node
    for child in node["children"]:
        yield from _nodes(child, name)


def _stage(run: dict[str, Any], title: str) -> dict[str, Any]:
    found = [n for n in _nodes(run["root"], "stage") if n["args"] == [title]]
    assert len(found) == 1, f"stage '{title}' appears {len(found)} times"
    return found[0]


def _children(node: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in node["children"] if c["name"] == name]


def _events(run: dict[str, Any], name: str, stage: str | None = None) -> list[dict[str, Any]]:
    return [e for e in run["events"] if e["name"] == name and (stage is None or stage in e["stages"])]


def test_both_files_compile_to_the_conversion_phase(groovy_run: dict[str, Any]) -> None:
    jenkinsfile, library, _ = groovy_run["checks"]
    assert jenkinsfile == {**jenkinsfile, "ok": True, "errors": []}
    assert library == {**library, "ok": True, "errors": []}
    assert library["ms"] < 5000


def test_a_syntax_error_is_reported_with_its_line_and_column(groovy_run: dict[str, Any]) -> None:
    broken = groovy_run["checks"][2]
    assert broken["ok"] is False
    text = groovy_run["broken_text"]
    at = text.index(BROKEN_TO)
    line = text[:at].count("\n") + 1
    column = at - text.rfind("\n", 0, at) + len(BROKEN_FROM)
    assert [(e["line"], e["column"]) for e in broken["errors"]] == [(line, column)]
    assert f"line {line}" in broken["errors"][0]["message"]


def test_the_jenkinsfile_runs_the_library_with_the_same_stages_as_gitlab(groovy_run: dict[str, Any]) -> None:
    run = groovy_run["push"]
    titles = [n["args"][0] for n in _nodes(run["root"], "stage")]
    assert titles == ["Candidates", "Plan", "Lint", "Compose", "Push", "Stage", "Boot test", "Approve", "Promote"]
    commands = {
        "Lint": f"python3 -m edgeci lint --base {'a' * 40}",
        "Compose": "python3 -m edgeci compose gateway --arch x86_64 --url 'https://ostree.example.com/prod/repo'",
        "Push": "python3 -m edgeci push kiosk --arch x86_64",
        "Stage": "python3 -m edgeci stage serve gateway --arch x86_64",
        "Boot test": "python3 -m edgeci boot-test kiosk --arch x86_64",
    }
    for stage, command in commands.items():
        assert command in [e["args"][0] for e in _events(run, "sh", stage)], stage
    # a first release (no production yet) composes without a parent
    assert "python3 -m edgeci compose kiosk --arch x86_64" in [e["args"][0] for e in _events(run, "sh", "Compose")]
    # one parallel branch per blueprint × arch in every build stage, the image-mode blueprint (gateway-bootc) like
    # the ostree ones: the same stages run the same commands for both kinds
    for stage in ("Compose", "Push", "Stage", "Boot test"):
        assert [e["args"][0] for e in _events(run, "branch", stage)] == ["gateway/x86_64", "kiosk/x86_64",
                                                                          "gateway-bootc/x86_64"]
    image = {"Compose": "compose", "Push": "push", "Stage": "stage serve", "Boot test": "boot-test"}
    for stage, verb in image.items():
        assert f"python3 -m edgeci {verb} gateway-bootc --arch x86_64" in [e["args"][0] for e in
                                                                           _events(run, "sh", stage)], stage


@pytest.mark.parametrize(("stage", "reports"), [
    ("Lint", "reports/lint-*.xml"), ("Compose", "reports/compose-*.xml"), ("Push", "reports/push-*.xml"),
    ("Stage", "reports/stage-*.xml"), ("Boot test", "reports/boot-test-*.xml"),
    ("Promote", "reports/gate-*.xml,reports/promote-*.xml"),
])
def test_junit_in_every_stage_post_always(groovy_run: dict[str, Any], stage: str, reports: str) -> None:
    node = _stage(groovy_run["push"], stage)
    (post,) = _children(node, "post")
    (always,) = _children(post, "always")
    junit = _children(always, "junit")
    assert junit and junit[0]["args"] == [f"[allowEmptyResults: true, testResults: {reports}]"]


def test_approval_input_has_the_library_submitter_on_no_agent(groovy_run: dict[str, Any]) -> None:
    approve = _stage(groovy_run["push"], "Approve")
    assert _children(approve, "agent")[0]["args"] == ["none"]
    (when,) = _children(approve, "when")
    assert _children(when, "beforeInput")[0]["args"] == ["true"]  # conditions before anyone is asked
    (inp,) = _children(approve, "input")
    fields = {c["name"]: c["args"] for c in inp["children"]}
    assert fields["id"] == ["Promote"]
    assert fields["submitter"] == ["release-managers"]  # from the library's settings.properties
    # issue 16: no name travels through the pipeline; the gate reads the approver back from Jenkins
    assert "submitterParameter" not in fields
    # the approval names the exact commits it approves
    assert f"edgeci-approve {CHECKSUM_GATEWAY}  gateway/x86_64 1.0.1" in fields["message"][0]
    assert f"edgeci-approve {CHECKSUM_KIOSK}  kiosk/x86_64 2.0.0" in fields["message"][0]
    assert f"edgeci-approve {'3' * 64}  gateway-bootc/x86_64 1.0.1" in fields["message"][0]  # the image's digest
    assert not list(_nodes(approve, "node")) and not list(_nodes(approve, "lock"))


def test_milestones_around_the_input_and_the_gate_reads_the_approver_from_jenkins(
        groovy_run: dict[str, Any]) -> None:
    run = groovy_run["push"]
    (inp,) = _events(run, "input")
    ready, milestone = _events(run, "milestone")
    (lock,) = _events(run, "lock")
    # candidate ready (older builds still building are aborted), then after the approval the milestone that
    # aborts older builds still waiting (issue 16: builds are concurrent, no disableConcurrentBuilds)
    assert ready["args"] == ["[ordinal: 1, label: candidate]"] and ready["stages"][-1] == "Boot test"
    assert milestone["args"] == ["[ordinal: 2, label: promote]"]
    assert ready["index"] < inp["index"] < milestone["index"] < lock["index"]
    assert milestone["stages"] == lock["stages"] == ["Promote"]
    assert lock["args"] == ["ostree-prod"]
    assert _children(_stage(run, "Promote"), "agent")[0]["children"][0]["args"] == ["ostree-prod"]
    (lock_node,) = _nodes(_stage(run, "Promote"), "lock")
    assert [n["args"] for n in _nodes(lock_node, "unstash")] == [["edgeci-records"]]
    gates = [n for n in _nodes(lock_node, "sh") if " gate " in n["args"][0]]
    promotes = [n for n in _nodes(lock_node, "sh") if " promote " in n["args"][0]]
    assert len(gates) == len(promotes) == 3  # one per candidate (two ostree, one image), inside the lock
    # issue 16: the approver comes from the build through the API, never from a name the pipeline passes
    assert gates[0]["args"][0] == ('python3 -m edgeci gate "$EDGECI_BLUEPRINT" --arch "$EDGECI_ARCH" '
                                   '--source jenkins --build "$BUILD_NUMBER" '
                                   '--approved-checksum "$EDGECI_APPROVED_CHECKSUM"')
    assert not any("APPROVER" in n["args"][0] for n in _nodes(run["root"], "sh"))
    envs = [n["env"] for n in _nodes(lock_node, "withEnv")]
    assert ["EDGECI_BLUEPRINT=gateway", "EDGECI_ARCH=x86_64", f"EDGECI_APPROVED_CHECKSUM={CHECKSUM_GATEWAY}"] in envs
    # the records and the signed evidence travel: stashed after the boot test, unstashed on the production agent
    assert [e["args"][0] for e in _events(run, "stash")] == [
        "[name: edgeci-records, includes: build/*/*/record.json,build/*/*/evidence.json,reports/**, allowEmpty: true]"]


def test_triggers_options_and_changeset(groovy_run: dict[str, Any]) -> None:
    run = groovy_run["push"]
    assert [e["args"] for e in _events(run, "cron")] == [["H H 1 * *"]]
    # issue 16: a new candidate builds while an older one waits for approval
    assert not _events(run, "disableConcurrentBuilds") and _events(run, "skipStagesAfterUnstable")
    candidates = _stage(run, "Candidates")
    (when,) = _children(candidates, "when")
    assert [n["args"] for n in _nodes(when, "changeset")] == [["blueprints/**"]]
    assert [n["args"] for n in _nodes(when, "triggeredBy")] == [["TimerTrigger"]]


def test_push_builds_the_changed_blueprints_and_the_timer_build_rebuilds_all(groovy_run: dict[str, Any]) -> None:
    cause = "hudson.triggers.TimerTrigger$TimerTriggerCause"
    for variant, args in (("push", f"--base {'a' * 40}"), ("timer", "--all")):
        run = groovy_run[variant]
        assert [e["args"] for e in _events(run, "currentBuild.getBuildCauses")] == [[cause]]
        plan = [e["args"][0] for e in _events(run, "sh", "Plan")]
        assert plan == [f"[returnStdout: true, script: python3 -m edgeci jenkins targets {args}]"]
    # the monthly rebuild may keep production's version: lint accepts it, compose bumps the patch
    assert "python3 -m edgeci lint --rebuild" in [e["args"][0] for e in _events(groovy_run["timer"], "sh", "Lint")]
    pushed = [e["args"][0] for e in _events(groovy_run["push"], "sh", "Lint")]
    assert f"python3 -m edgeci lint --base {'a' * 40}" in pushed
    composes = [e["args"][0] for e in _events(groovy_run["timer"], "sh", "Compose")]
    assert composes and all(c.endswith(" --rebuild") for c in composes), composes


@pytest.mark.parametrize("stage", ["Approve", "Promote"])
def test_an_unstable_build_never_reaches_approval_or_promotion(groovy_run: dict[str, Any], stage: str) -> None:
    for variant, expected in (("push", True), ("unstable", False)):
        (when,) = _children(_stage(groovy_run[variant], stage), "when")
        (all_of,) = _nodes(when, "allOf")
        assert all(c["name"] == "expression" for c in all_of["children"])
        assert all(c["result"] for c in all_of["children"]) is expected, variant


def test_only_the_promote_branch_runs_the_monthly_rebuild_and_reaches_approval(groovy_run: dict[str, Any]) -> None:
    branch = groovy_run["branch"]
    assert [e["args"] for e in _events(branch, "cron")] == [[""]]  # an empty spec never fires
    (when,) = _children(_stage(branch, "Approve"), "when")
    (all_of,) = _nodes(when, "allOf")
    assert not all(c["result"] for c in all_of["children"])


@pytest.mark.parametrize(("stage", "credentials", "variable"), [
    ("Compose", "edgeci-compose-key", "EDGECI_COMPOSE_KEY"),
    ("Boot test", "edgeci-boot-test-key", "EDGECI_BOOT_TEST_KEY"),
    ("Push", "edgeci-image-signing-key", "EDGECI_IMAGE_SIGNING_KEY"),
])
def test_each_signing_key_is_bound_only_inside_its_stage(groovy_run: dict[str, Any], stage: str, credentials: str,
                                                         variable: str) -> None:
    run = groovy_run["push"]
    bound = [e for e in _events(run, "file") if variable in e["args"][0]]
    assert [e["args"][0] for e in bound] == [f"[credentialsId: {credentials}, variable: {variable}]"]
    assert bound[0]["stages"][-1] == stage
    # the innermost withCredentials of the stage binds the key (Push nests it in the registry login)
    with_credentials = [n for n in _nodes(_stage(run, stage), "withCredentials")][-1]
    commands = [n["args"][0] for n in _nodes(with_credentials, "sh")]
    wanted = {"Compose": "compose", "Boot test": "boot-test", "Push": "push"}[stage]
    assert commands and all(f" {wanted} " in c for c in commands)  # only that stage's edgeci commands


def test_registry_and_jenkins_credentials_are_bound_in_push_and_promote_only(groovy_run: dict[str, Any]) -> None:
    run = groovy_run["push"]
    pairs = {e["args"][0]: e["stages"][-1] for e in _events(run, "usernamePassword")}
    assert pairs == {
        "[credentialsId: edgeci-registry, usernameVariable: EDGECI_REGISTRY_USER, "
        "passwordVariable: EDGECI_REGISTRY_PASSWORD]": "Push",
        "[credentialsId: edgeci-jenkins-api, usernameVariable: EDGECI_JENKINS_USER, "
        "passwordVariable: EDGECI_JENKINS_TOKEN]": "Promote"}


def test_approvers_and_credentials_come_from_the_library_never_the_jenkinsfile(groovy_run: dict[str, Any]) -> None:
    settings = dict(line.split("=", 1) for line in SETTINGS.read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert settings["submitter"] == "release-managers" and settings["promoteBranch"] == "main"
    assert "submitter" not in JENKINSFILE.read_text()
    tampered = groovy_run["tampered"]
    assert tampered["error"] and "'submitter' comes from the library's configuration" in tampered["error"]
    assert not list(_nodes(tampered["root"], "stage"))  # refused before the pipeline starts
