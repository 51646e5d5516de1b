"""The pre-commit hook for real: pre-commit (from PyPI) installs mnnq from a git copy of this
working tree as its hook repo and gates commits in a temporary project repository.

The hook environment is built once per module (pip installs mnnq and its dependencies; about
25 s with a warm pip cache).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import DIGITS_DIR

import pre_commit  # noqa: F401,E402 - the test extra installs it: a missing one must fail, not skip
if shutil.which("git") is None:  # pragma: no cover
    pytest.skip("git is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
# What building and installing the package needs (no caches, venvs or .git).
HOOK_REPO_FILES = ("pyproject.toml", "README.md", "LICENSE", ".pre-commit-hooks.yaml", "mnnq", "plugins")


def git_env(home: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "mnnq tests", "GIT_AUTHOR_EMAIL": "tests@mnnq.invalid",
        "GIT_COMMITTER_NAME": "mnnq tests", "GIT_COMMITTER_EMAIL": "tests@mnnq.invalid",
        "PRE_COMMIT_HOME": str(home), "PRE_COMMIT_COLOR": "never", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    })
    env.pop("GITHUB_ACTIONS", None)
    return env


def sh(args, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}")
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory, gate_model_files):
    root = tmp_path_factory.mktemp("precommit")
    env = git_env(root / "pre-commit-home")
    hook_repo = root / "hook-repo"
    hook_repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in HOOK_REPO_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, hook_repo / name, ignore=ignore)
        elif src.is_file():
            shutil.copy(src, hook_repo / name)
    sh(["git", "init", "-q"], hook_repo, env)
    sh(["git", "add", "-A"], hook_repo, env)
    sh(["git", "commit", "-q", "-m", "mnnq hook repo"], hook_repo, env)
    rev = sh(["git", "rev-parse", "HEAD"], hook_repo, env).stdout.strip()
    return {"root": root, "env": env, "hook_repo": hook_repo, "rev": rev,
            "models": gate_model_files}


def commit(project: Path, env: dict, message: str) -> subprocess.CompletedProcess:
    sh(["git", "add", "-A"], project, env)
    return sh(["git", "commit", "-m", message], project, env, check=False)


def head_count(project: Path, env: dict) -> int:
    return int(sh(["git", "rev-list", "--count", "HEAD"], project, env).stdout)


def test_precommit_hook_gates_commits(setup):
    env, models = setup["env"], setup["models"]
    project = setup["root"] / "project"
    project.mkdir()
    shutil.copy(DIGITS_DIR / "digits.mnn", project / "digits.mnn")
    shutil.copytree(DIGITS_DIR / "testset", project / "testset")
    shutil.copy(models["good"], project / "digits.q.mnn")
    config = "models:\n  - name: digits\n    float: digits.mnn\n    quantized: digits.q.mnn\n" \
             "    test_dir: testset\n    rate: 0.05\n"
    (project / "mnnq.yaml").write_text(config)
    (project / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {setup['hook_repo']}\n    rev: {setup['rev']}\n    hooks:\n"
        "      - id: mnnq-check\n      - id: mnnq-check-all\n        stages: [manual]\n")
    sh(["git", "init", "-q"], project, env)
    sh([sys.executable, "-m", "pre_commit", "install"], project, env)

    # 1. within budget: the commit goes through
    done = commit(project, env, "add a quantized model within budget")
    assert done.returncode == 0, done.stdout
    assert "mnnq check (quantized models within their error budget)" in done.stdout
    assert "Passed" in done.stdout
    assert head_count(project, env) == 1

    # 2. over budget: the commit is refused with a clear message
    shutil.copy(models["bad"], project / "digits.q.mnn")
    refused = commit(project, env, "4-bit model over budget")
    assert refused.returncode != 0
    assert "Failed" in refused.stdout and "- exit code: 1" in refused.stdout
    assert "FAIL digits: max_rel" in refused.stdout and "> rate 0.05" in refused.stdout
    assert head_count(project, env) == 1

    # 3. a corrupt model file fails closed
    shutil.copy(models["corrupt"], project / "digits.q.mnn")
    refused = commit(project, env, "corrupt model")
    assert refused.returncode != 0
    assert "- exit code: 2" in refused.stdout and "not a readable MNN model" in refused.stdout
    assert head_count(project, env) == 1

    # 4. files that belong to no model do not trigger it; a config change checks every model
    shutil.copy(models["good"], project / "digits.q.mnn")
    sh(["git", "add", "-A"], project, env)  # back to the committed model
    (project / "NOTES.md").write_text("notes\n")
    done = commit(project, env, "notes")
    assert done.returncode == 0, done.stdout
    assert "Skipped" in done.stdout
    (project / "mnnq.yaml").write_text(config.replace("rate: 0.05", "rate: 0.001"))
    refused = commit(project, env, "tighten the budget")
    assert refused.returncode != 0 and "FAIL digits" in refused.stdout
    assert head_count(project, env) == 2

    # 5. the whole-repo hook (manual stage) checks every listed model
    (project / "mnnq.yaml").write_text(config)
    sh(["git", "add", "-A"], project, env)
    manual = sh([sys.executable, "-m", "pre_commit", "run", "--hook-stage", "manual", "mnnq-check-all", "--verbose"],
                project, env, check=False)
    assert manual.returncode == 0, manual.stdout
    assert "PASS digits" in manual.stdout
