"""Change detection on real git repositories: add, modify, rename, delete, checks files, merges, missing base."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgeci import cli
from edgeci.changes import ChangesError, blueprint_name, changed
from edgeci.errors import EdgeCIError
from edgeci.tools import git
from tests.fixtures.gitrepo import GitRepo, blueprint_text


@pytest.fixture
def repo(git_repo: GitRepo) -> GitRepo:
    """main with gateway (+ checks) and kiosk, and an unrelated file."""
    git_repo.write("blueprints/gateway.toml", blueprint_text("gateway"))
    git_repo.write("blueprints/gateway.checks.yaml", "checks: []\n")
    git_repo.write("blueprints/kiosk.toml", blueprint_text("kiosk"))
    git_repo.write("README.md", "hello\n")
    git_repo.commit("initial")
    return git_repo


def cs_of(repo: GitRepo, base: str, head: str = "HEAD", **kw: object):
    return changed(repo.path, base, head, "blueprints", **kw)  # type: ignore[arg-type]


def test_blueprint_name_mapping() -> None:
    assert blueprint_name("blueprints/gw.toml", "blueprints") == "gw"
    assert blueprint_name("blueprints/gw.checks.yaml", "blueprints") == "gw"
    # a file under blueprints/NAME/ belongs to the image-mode directory NAME (changed() keeps only names that
    # are blueprints at HEAD, so a directory without a Containerfile selects nothing)
    assert blueprint_name("blueprints/sub/gw.toml", "blueprints") == "sub"
    assert blueprint_name("blueprints/img/Containerfile", "blueprints") == "img"
    assert blueprint_name("other/gw.toml", "blueprints") is None
    assert blueprint_name("blueprints/notes.md", "blueprints") is None
    assert blueprint_name("gw.toml", ".") == "gw"


def test_added_blueprint(repo: GitRepo) -> None:
    base = repo.sha()
    repo.write("blueprints/edge.toml", blueprint_text("edge"))
    repo.commit("add edge")
    cs = cs_of(repo, base)
    assert (cs.changed, cs.deleted) == (["edge"], [])
    assert cs.reasons["edge"] == ["blueprints/edge.toml added"]
    assert cs.base == base and cs.head == repo.sha() and cs.merge_base == base


def test_modified_blueprint_and_unrelated_files(repo: GitRepo) -> None:
    base = repo.sha()
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.1"))
    repo.write("README.md", "changed\n")
    repo.write("blueprints/sub/nested.toml", blueprint_text("nested"))
    repo.write("blueprints/NOTES.md", "notes\n")
    repo.commit("bump kiosk")
    cs = cs_of(repo, base)
    assert (cs.changed, cs.deleted) == (["kiosk"], [])


def test_checks_file_change_marks_its_blueprint(repo: GitRepo) -> None:
    base = repo.sha()
    repo.write("blueprints/gateway.checks.yaml", "checks:\n  - name: x\n    file_exists: /etc/motd\n")
    repo.commit("more checks")
    cs = cs_of(repo, base)
    assert cs.changed == ["gateway"] and cs.reasons["gateway"] == ["blueprints/gateway.checks.yaml modified"]


def test_checks_file_added_or_deleted_marks_its_blueprint_changed(repo: GitRepo) -> None:
    base = repo.sha()
    repo.write("blueprints/kiosk.checks.yaml", "checks: []\n")
    repo.rm("blueprints/gateway.checks.yaml")
    repo.commit("checks")
    cs = cs_of(repo, base)
    assert (cs.changed, cs.deleted) == (["gateway", "kiosk"], [])


def test_orphan_checks_file_is_ignored(repo: GitRepo) -> None:
    base = repo.sha()
    repo.write("blueprints/ghost.checks.yaml", "checks: []\n")
    repo.commit("orphan")
    assert cs_of(repo, base).changed == []


def test_renamed_blueprint(repo: GitRepo) -> None:
    base = repo.sha()
    repo.mv("blueprints/gateway.toml", "blueprints/gw.toml")
    repo.mv("blueprints/gateway.checks.yaml", "blueprints/gw.checks.yaml")
    repo.commit("rename gateway to gw")
    cs = cs_of(repo, base)
    assert (cs.changed, cs.deleted) == (["gw"], ["gateway"])
    assert "blueprints/gw.toml renamed from blueprints/gateway.toml" in cs.reasons["gw"]
    assert "blueprints/gateway.toml renamed to blueprints/gw.toml" in cs.reasons["gateway"]


def test_deleted_blueprint(repo: GitRepo) -> None:
    base = repo.sha()
    repo.rm("blueprints/gateway.toml")
    repo.rm("blueprints/gateway.checks.yaml")
    repo.commit("drop gateway")
    cs = cs_of(repo, base)
    assert (cs.changed, cs.deleted) == ([], ["gateway"])


def test_several_commits_add_then_delete_is_no_change(repo: GitRepo) -> None:
    base = repo.sha()
    repo.write("blueprints/tmp.toml", blueprint_text("tmp"))
    repo.commit("add tmp")
    repo.rm("blueprints/tmp.toml")
    repo.commit("remove tmp")
    cs = cs_of(repo, base)
    assert (cs.changed, cs.deleted) == ([], [])


def test_merge_request_ignores_what_landed_on_the_target_meanwhile(repo: GitRepo) -> None:
    repo.branch("feature")
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.1.0"))
    repo.commit("feature: kiosk")
    repo.checkout("main")
    repo.write("blueprints/gateway.toml", blueprint_text("gateway", "1.0.1"))
    repo.commit("main: gateway")
    repo.checkout("feature")
    # the MR branch merges main in: gateway's change must still not count as the MR's
    repo.merge("main", "merge main into feature")
    cs = cs_of(repo, "main", "feature")
    assert (cs.changed, cs.deleted) == (["kiosk"], [])


def test_push_of_a_merge_commit_lists_what_it_brought_in(repo: GitRepo) -> None:
    before = repo.sha()
    repo.branch("feature")
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.1.0"))
    repo.commit("feature: kiosk")
    repo.checkout("main")
    repo.write("README.md", "main moves on\n")
    repo.commit("main: readme")
    repo.merge("feature", "Merge branch 'feature'")
    cs = cs_of(repo, before)  # CI_COMMIT_BEFORE_SHA..the merge commit
    assert cs.changed == ["kiosk"] and cs.merge_base == before


def test_force_push_compares_with_the_common_ancestor(repo: GitRepo) -> None:
    root = repo.sha()
    repo.write("blueprints/gateway.toml", blueprint_text("gateway", "2.0.0"))
    old_tip = repo.commit("to be discarded")
    repo.git("reset", "-q", "--hard", root)
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.1"))
    repo.commit("rewritten")
    cs = cs_of(repo, old_tip)
    assert cs.changed == ["kiosk"] and cs.merge_base == root


def test_all_lists_every_blueprint_at_head(repo: GitRepo) -> None:
    assert cs_of(repo, None, all=True).changed == ["gateway", "kiosk"]
    assert changed(repo.path, None, "HEAD", repo.path / "blueprints", all=True).changed == ["gateway", "kiosk"]


def test_all_zero_base_says_so_and_how_to_fix(repo: GitRepo) -> None:
    with pytest.raises(ChangesError) as e:
        cs_of(repo, "0" * 40)
    msg = str(e.value)
    assert "all-zero" in msg and "--all" in msg and "--base" in msg and e.value.exit_code == 2


def test_unknown_base(repo: GitRepo) -> None:
    with pytest.raises(ChangesError, match="does not exist"):
        cs_of(repo, "no-such-branch")
    with pytest.raises(ChangesError, match="head revision"):
        cs_of(repo, "main", "no-such-head")


def test_shallow_clone_missing_base(repo: GitRepo, tmp_path: Path) -> None:
    first = repo.sha()
    for v in ("1.0.1", "1.0.2"):
        repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", v))
        repo.commit(f"kiosk {v}")
    clone = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo.path}", str(clone)], check=True)
    assert git.is_shallow(clone)
    with pytest.raises(ChangesError) as e:
        changed(clone, first, "HEAD", "blueprints")
    assert "shallow clone" in str(e.value) and "GIT_DEPTH" in str(e.value) and "--unshallow" in str(e.value)
    # --all needs no base, so scheduled pipelines work on shallow clones
    assert changed(clone, None, "HEAD", "blueprints", all=True).changed == ["gateway", "kiosk"]


def test_shallow_clone_base_present_but_no_merge_base(repo: GitRepo, tmp_path: Path) -> None:
    repo.branch("feature")
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.1"))
    repo.commit("feature")
    repo.checkout("main")
    repo.write("README.md", "x\n")
    repo.commit("main")
    clone = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--no-single-branch", f"file://{repo.path}", str(clone)],
                   check=True)
    with pytest.raises(ChangesError, match=r"no common ancestor.*shallow"):
        changed(clone, "origin/main", "origin/feature", "blueprints")


def test_unrelated_histories(repo: GitRepo) -> None:
    repo.git("checkout", "-q", "--orphan", "other")
    repo.write("blueprints/x.toml", blueprint_text("x"))
    repo.commit("unrelated")
    with pytest.raises(ChangesError, match="no common history"):
        cs_of(repo, "main")


def test_not_a_git_repository(tmp_path: Path) -> None:
    (tmp_path / "blueprints").mkdir()
    with pytest.raises(ChangesError, match="not inside a git work tree"):
        changed(tmp_path, "HEAD", "HEAD", "blueprints")


def test_git_show_and_last_commit(repo: GitRepo) -> None:
    first = repo.sha()
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.1"))
    repo.commit("kiosk 1.0.1", env={"GIT_AUTHOR_NAME": "Bob", "GIT_AUTHOR_EMAIL": "bob@example.com"})
    assert git.show(repo.path, first, "blueprints/kiosk.toml") == blueprint_text("kiosk")
    assert git.show(repo.path, first, "blueprints/none.toml") is None
    info = git.last_commit(repo.path)
    assert info is not None
    assert (info.author_name, info.author_email) == ("Bob", "bob@example.com")
    assert (info.committer_name, info.committer_email) == ("Carol Committer", "carol@example.com")
    assert info.subject == "kiosk 1.0.1" and info.sha == repo.sha() and info.time > 0
    assert git.last_commit(repo.path, "HEAD", "blueprints/gateway.toml").sha == first  # type: ignore[union-attr]
    assert git.head_sha(repo.path / "blueprints" / "kiosk.toml") == repo.sha()


# -- the CLI -----------------------------------------------------------------------------------


def run_cli(repo: GitRepo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
            *argv: str) -> tuple[int, str, str]:
    monkeypatch.chdir(repo.path)
    monkeypatch.delenv("EDGECI_CONFIG", raising=False)
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_changed_plain_and_json(repo: GitRepo, capsys, monkeypatch) -> None:
    base = repo.sha()
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.1"))
    repo.rm("blueprints/gateway.toml")
    repo.commit("change")
    code, out, _ = run_cli(repo, capsys, monkeypatch, "changed", "--base", base)
    assert code == 0 and out.splitlines() == ["kiosk", "deleted:", "gateway"]
    code, out, _ = run_cli(repo, capsys, monkeypatch, "changed", "--base", base, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["changed"] == ["kiosk"] and doc["deleted"] == ["gateway"]
    code, out, _ = run_cli(repo, capsys, monkeypatch, "changed", "--all")
    assert code == 0 and out.splitlines() == ["kiosk"]


def test_cli_changed_missing_base_is_one_line_exit_2(repo: GitRepo, capsys, monkeypatch) -> None:
    code, out, err = run_cli(repo, capsys, monkeypatch, "changed", "--base", "0" * 40)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "all-zero" in err
    code, _, err = run_cli(repo, capsys, monkeypatch, "changed")
    assert code == 2 and "--base" in err


def test_cli_lint_base_requires_a_version_bump(repo: GitRepo, capsys, monkeypatch) -> None:
    base = repo.sha()
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.0", package="htop"))
    repo.commit("kiosk: htop, forgot the bump")
    code, out, _ = run_cli(repo, capsys, monkeypatch, "lint", "--base", base)
    assert code == 1 and "blueprints/kiosk.toml:2: error: [version-bump]" in out
    repo.write("blueprints/kiosk.toml", blueprint_text("kiosk", "1.0.1", package="htop"))
    repo.commit("kiosk 1.0.1")
    code, out, _ = run_cli(repo, capsys, monkeypatch, "lint", "--base", base)
    assert code == 0, out


def test_cli_lint_base_follows_renames(repo: GitRepo, capsys, monkeypatch) -> None:
    base = repo.sha()
    repo.mv("blueprints/kiosk.toml", "blueprints/kiosk2.toml")
    repo.write("blueprints/kiosk2.toml", blueprint_text("kiosk2", "1.0.0", package="vim-enhanced"))
    repo.commit("rename kiosk; the name changed but not the version")
    code, out, _ = run_cli(repo, capsys, monkeypatch, "lint", "--base", base, "blueprints/kiosk2.toml")
    assert code == 1 and "[version-bump]" in out


def test_cli_lint_base_missing_is_exit_2(repo: GitRepo, capsys, monkeypatch) -> None:
    code, _, err = run_cli(repo, capsys, monkeypatch, "lint", "--base", "nope")
    assert code == 2 and "does not exist" in err


def test_record_git_sha_is_head(repo: GitRepo, capsys, monkeypatch) -> None:
    code, _, _ = run_cli(repo, capsys, monkeypatch, "lint")
    assert code == 0
    rec = json.loads((repo.path / "build" / "kiosk" / "x86_64" / "record.json").read_text())
    assert rec["sections"]["blueprint"]["git_sha"] == repo.sha()


def test_changes_error_is_an_edgeci_error() -> None:
    assert issubclass(ChangesError, EdgeCIError)


def test_image_mode_directories_are_blueprints(tmp_path: Path) -> None:
    """blueprints/NAME/ (Containerfile, checks.yaml, build context): any file in it changes NAME; --all lists it."""
    import subprocess

    from edgeci.changes import changed

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a",
                            "GIT_COMMITTER_EMAIL": "a@x", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    d = tmp_path / "blueprints" / "img"
    d.mkdir(parents=True)
    (d / "Containerfile").write_text("FROM x\n")
    (d / "app.conf").write_text("a\n")
    (tmp_path / "blueprints" / "notes").mkdir()
    (tmp_path / "blueprints" / "notes" / "README").write_text("not an image\n")
    (tmp_path / "blueprints" / "edge.toml").write_text('name = "edge"\nversion = "1.0.0"\n')
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "one")
    assert changed(tmp_path, None, all=True).changed == ["edge", "img"]
    (d / "app.conf").write_text("b\n")
    git("commit", "-qam", "two")
    cs = changed(tmp_path, "HEAD~1")
    assert cs.changed == ["img"] and cs.reasons["img"] == ["blueprints/img/app.conf modified"]
    git("rm", "-rq", "blueprints/img")
    git("commit", "-qm", "three")
    assert changed(tmp_path, "HEAD~1").deleted == ["img"]
