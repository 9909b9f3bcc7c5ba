"""Pure parts of the platform command line: the promotion guard, the registry lock's protocol
(against an in-memory fake registry), argument parsing, the job runtime_env and the env file."""
from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from bfn_platform.errors import BfnError
from bfn_platform.promotion import Evaluation, RegistryLock, judge

SHA = "a" * 64


def ev(version, bits, se=0.01, sha=SHA, label="inf"):
    return Evaluation(str(version), label, bits, se, sha)


# ------------------------------------------------------------------------------------- the guard

def test_guard_accepts_a_candidate_better_by_more_than_the_combined_se():
    verdict = judge(ev(2, 1.0), ev(1, 1.1), "digits")
    assert verdict.ok and "1.0000" in verdict.reason and "1.1000" in verdict.reason


def test_guard_refuses_within_the_combined_se_and_shows_both_figures():
    # 1.08 + sqrt(0.01^2 + 0.01^2) = 1.094 is not < 1.09
    verdict = judge(ev(2, 1.08), ev(1, 1.09), "digits")
    assert not verdict.ok
    assert "1.0800" in verdict.reason and "1.0900" in verdict.reason and "0.0141" in verdict.reason


def test_guard_refuses_a_worse_candidate():
    assert not judge(ev(2, 1.5), ev(1, 1.0), "digits").ok


def test_guard_margin_uses_both_standard_errors():
    # difference 0.1: enough with se 0.05 each (margin 0.0707), not with 0.05 and 0.09 (0.103)
    assert judge(ev(2, 1.0, se=0.05), ev(1, 1.1, se=0.05), "m").ok
    assert not judge(ev(2, 1.0, se=0.05), ev(1, 1.1, se=0.09), "m").ok


def test_guard_needs_the_same_test_set():
    verdict = judge(ev(2, 0.5), ev(1, 1.0, sha="b" * 64), "digits")
    assert not verdict.ok and "aaaaaaaaaaaa" in verdict.reason and "bbbbbbbbbbbb" in verdict.reason


def test_guard_needs_an_evaluated_candidate_and_names_the_command():
    verdict = judge(Evaluation("3", "n100", None, None, None), None, "digits")
    assert not verdict.ok and "bfn eval models:/digits/3 --steps 100" in verdict.reason
    assert not judge(ev(3, 1.0, sha=None), None, "digits").ok


def test_guard_without_champion_accepts_an_evaluated_candidate():
    assert judge(ev(1, 2.0), None, "digits").ok


def test_guard_refuses_when_the_champion_was_not_evaluated():
    verdict = judge(ev(2, 1.0), Evaluation("1", "inf", None, None, None), "digits")
    assert not verdict.ok and "--force" in verdict.reason


# ------------------------------------------------------------------------------------- the lock

class FakeRegistry:
    """The two registry calls the lock relies on, with the server's semantics: create is atomic."""

    def __init__(self):
        self.models: dict[str, dict] = {}
        self.mutex = threading.Lock()

    def create_registered_model(self, name, tags=None, description=None):
        from mlflow.exceptions import MlflowException

        with self.mutex:
            if name in self.models:
                raise MlflowException(f"Registered Model (name={name}) already exists.",
                                      error_code="RESOURCE_ALREADY_EXISTS")
            self.models[name] = dict(tags or {})

    def get_registered_model(self, name):
        from mlflow.exceptions import MlflowException

        with self.mutex:
            if name not in self.models:
                raise MlflowException(f"Registered Model with name={name} not found",
                                      error_code="RESOURCE_DOES_NOT_EXIST")
            return type("RM", (), {"tags": dict(self.models[name])})()

    def delete_registered_model(self, name):
        with self.mutex:
            self.models.pop(name, None)


def test_lock_is_exclusive_across_threads():
    registry, inside, overlaps, done = FakeRegistry(), [], [], []

    def work():
        with RegistryLock(registry, "digits", timeout=30):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            threading.Event().wait(0.02)
            inside.pop()
            done.append(1)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 5 and not overlaps
    assert "bfn-lock.digits" not in registry.models  # released


def test_lock_times_out_with_one_line_and_breaks_an_expired_lock():
    registry = FakeRegistry()
    holder = RegistryLock(registry, "digits", ttl=60)
    holder.acquire()
    with pytest.raises(BfnError, match="holds the registry lock"):
        RegistryLock(registry, "digits", timeout=0.3).acquire()
    registry.models["bfn-lock.digits"]["bfn.lock.expires"] = "0"  # its holder died long ago
    taker = RegistryLock(registry, "digits", timeout=5)
    taker.acquire()
    assert registry.models["bfn-lock.digits"]["bfn.lock.owner"] == taker.token
    holder.release()  # the old holder must not remove the new holder's lock
    assert registry.models["bfn-lock.digits"]["bfn.lock.owner"] == taker.token
    taker.release()
    assert not registry.models


# ------------------------------------------------------------------------------------- parsing

def test_step_labels():
    from bfn_platform.commands.models import step_label

    assert [step_label(s) for s in ("inf", "100", "n100", "INF")] == ["inf", "n100", "n100", "inf"]
    with pytest.raises(ValueError):
        step_label("0")


def test_force_without_reason_is_refused_before_any_request():
    from bfn_platform.promotion import promote

    with pytest.raises(BfnError, match="--reason"):
        promote(object(), "digits", "2", force=True, reason=" ")


def test_parse_ports():
    from bfn_platform.stack_state import DEFAULT_PORTS, parse_ports

    assert parse_ports(None) == {}
    assert parse_ports("ray=26379, mlflow=25000") == {"ray": 26379, "mlflow": 25000}
    for bad in ("ray", "gpu=1", "ray=0", "ray=x", "ray=7000,s3=7000"):
        with pytest.raises(BfnError):
            parse_ports(bad)
    with pytest.raises(BfnError, match="16379 for ray in --ports lies in Ray's worker port range 10002-19999"):
        parse_ports("ray=16379")  # the form the help used to show: Ray's workers would take it
    assert set(DEFAULT_PORTS) == {"ray", "dashboard", "client", "mlflow", "s3"}


def test_cli_usage_errors_exit_2(capsys):
    from bfn_platform.cli import main

    for argv in (["models", "promote", "digits"], ["runs"], ["stack", "sideways"], ["jobs", "status"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_every_new_command_has_examples_in_its_help():
    from bfn_platform.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("submit", "jobs", "runs", "models", "stack", "ui"):
        assert "example" in (sub.choices[name].epilog or ""), name


# ------------------------------------------------------------------------------------- submit

def test_submit_entrypoint_takes_bfn_commands_only():
    from bfn_platform.commands.submit import entrypoint

    assert entrypoint(["--", "bfn", "train", "a b.yaml", "--set", "x=1"]) == "bfn train 'a b.yaml' --set x=1"
    for bad in ([], ["--"], ["rm", "-rf", "/"]):
        with pytest.raises(BfnError):
            entrypoint(bad)


def test_runtime_env_ships_the_project_without_state_and_forwards_settings(tmp_path):
    from bfn_platform.jobs import project_root, runtime_env

    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (6 * 1024 * 1024))
    (tmp_path / "small.py").write_text("x = 1\n")
    home = tmp_path / "home"
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cret",
           "AWS_SESSION_TOKEN": "sessi0n", "MLFLOW_TRACKING_PASSWORD": "pa55", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
           "RAY_ADDRESS": "127.0.0.1:6379", "RAY_AUTH_TOKEN_PATH": "/x", "HOME": "/root", "BFN_HOME": str(home)}
    rt = runtime_env(tmp_path, env)
    assert rt["working_dir"] == str(tmp_path)
    for needle in ("/.venv", "/.bfn", "/.git", "/data", "*.egg-info", "/big.bin"):
        assert needle in rt["excludes"], needle
    assert "/small.py" not in rt["excludes"] and "data" not in rt["excludes"]  # pipelines/data/ is code

    from ray._private.thirdparty import pathspec  # Ray matches excludes with these gitignore rules

    spec = pathspec.PathSpec.from_lines("gitwildmatch", rt["excludes"])
    assert spec.match_file("data/digits/train/manifest.json") and spec.match_file(".venv/bin/python")
    assert not spec.match_file("pipelines/data/reader.py")
    # credentials never travel as values (Ray logs a runtime_env): the keys go to a 0600 file, its path travels
    creds = Path(rt["env_vars"].pop("AWS_SHARED_CREDENTIALS_FILE"))
    assert rt["env_vars"] == {k: env[k] for k in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "BFN_HOME")}
    assert creds.parent == home / "credentials" and oct(creds.stat().st_mode & 0o777) == "0o600"
    assert creds.read_text().split() == ["[default]", "aws_access_key_id", "=", "AKIDEXAMPLE", "aws_secret_access_key", "=",
                                         "s3cret", "aws_session_token", "=", "sessi0n"]
    assert runtime_env(tmp_path, env)["env_vars"]["AWS_SHARED_CREDENTIALS_FILE"] == str(creds)  # same keys, same file
    for secret in ("s3cret", "sessi0n", "pa55", "AKIDEXAMPLE"):
        assert secret not in json.dumps(rt)
    assert (project_root() / "pyproject.toml").exists()


def test_redact_hides_credentials_echoed_by_ray():
    from bfn_platform.jobs import redact

    env = {"AWS_SECRET_ACCESS_KEY": "f5fc0123abcd", "AWS_ACCESS_KEY_ID": "bfnlocal99", "MLFLOW_TRACKING_URI": "http://x"}
    text = "runtime env {'AWS_SECRET_ACCESS_KEY': 'f5fc0123abcd', 'AWS_ACCESS_KEY_ID': 'bfnlocal99', 'M': 'http://x'}"
    assert redact(text, env) == "runtime env {'AWS_SECRET_ACCESS_KEY': '***', 'AWS_ACCESS_KEY_ID': '***', 'M': 'http://x'}"


def test_jobs_address_resolution(monkeypatch, tmp_path):
    from bfn_platform.jobs import resolve_address

    monkeypatch.setenv("BFN_HOME", str(tmp_path))
    for k in ("RAY_ADDRESS", "BFN_RAY_DASHBOARD"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(BfnError, match="--address"):
        resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.2:6379")  # a GCS address is not the Jobs API
    monkeypatch.setenv("BFN_RAY_DASHBOARD", "http://127.0.0.1:8265")
    assert resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:18265")
    assert resolve_address(None) == "http://127.0.0.1:18265"
    assert resolve_address("127.0.0.1:9") == "http://127.0.0.1:9"


# ------------------------------------------------------------------------------------- the env file

def test_stack_env_file_is_private_and_complete(tmp_path):
    from bfn_platform import settings as S
    from pipelines import names as N
    from bfn_platform.stack_state import Stack

    stack = Stack(tmp_path)
    stack.ray_token()
    path = stack.write_env_file()
    assert path == tmp_path / S.STACK_ENV_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(stack.token_file).st_mode) == 0o600
    text = path.read_text()
    for name in N.CONNECTING_ENV_VARS:
        if name not in (N.ENV_MLFLOW_TRACKING_USERNAME, *N.SECRET_ENV_VARS):
            assert f"export {name}=" in text, name
    assert "export RAY_ADDRESS=127.0.0.1:6379" in text and "RAY_AUTH_MODE=token" in text
    assert stack.ray_token() not in text  # the token stays in its own file
    # the S3 keys too: the file names a 0600 credentials file, and unsets keys a shell may hold
    stack.write_aws_credentials()
    keys = stack.s3_credentials()
    assert not any(value in text for value in keys.values()) and "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY" in text
    assert f"export AWS_SHARED_CREDENTIALS_FILE={stack.aws_credentials_file}" in text
    assert stat.S_IMODE(os.stat(stack.aws_credentials_file).st_mode) == 0o600
    import configparser

    ini = configparser.ConfigParser()
    ini.read(stack.aws_credentials_file)
    assert dict(ini["default"]) == {"aws_access_key_id": keys["AWS_ACCESS_KEY_ID"],
                                    "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"]}
    again = Stack(tmp_path)
    assert again.s3_credentials() == stack.s3_credentials()  # stable across down / up


def test_history_events_are_readable_sentences_that_read_back():
    from bfn_platform.registry_history import format_event, parse_event

    entries = [
        {"action": "promote", "alias": "champion", "version": "3", "previous": "2", "by": "ada", "at": "2026-12-03T06:00:00Z",
         "reason": "guard passed", "forced": False, "guard": "1.2000 ± 0.0100 beats 1.3000 ± 0.0100", "steps": "inf"},
        {"action": "promote", "alias": "champion", "version": "4", "previous": None, "by": "bob smith",
         "at": "2026-12-03T07:00:00Z", "reason": "same bits | smaller", "forced": True, "guard": "refused: x", "steps": "n100"},
        {"action": "rollback", "alias": "champion", "version": "3", "previous": "4", "by": "ada", "at": "2026-12-03T08:00:00Z",
         "reason": "rollback from v4", "forced": False, "guard": "", "steps": ""},
        {"action": "unguarded", "alias": "champion", "version": "5", "previous": "3", "by": "unknown (outside bfn: the UI)",
         "at": "2026-12-03T09:00:00Z", "reason": "alias moved", "forced": True, "guard": "not checked", "steps": ""},
    ]
    for entry in entries:
        text = format_event(entry)
        assert not text.startswith("{") and f"@champion v{entry['version']}" in text
        back = parse_event(text)
        for key in ("action", "alias", "version", "previous", "by", "at", "reason", "forced", "steps"):
            assert back[key] == entry[key], (key, back, text)
    old = '{"action": "promote", "alias": "champion", "version": "1", "by": "x", "at": "t"}'
    assert parse_event(old)["version"] == "1"  # registries written by earlier versions still read


def test_completion_script_completes_commands_subcommands_and_flags(tmp_path):
    import subprocess
    import sys

    script = subprocess.run([sys.executable, "-m", "bfn_platform.cli", "completion", "bash"], capture_output=True,
                            text=True, check=True).stdout
    (tmp_path / "c.sh").write_text(script)

    def complete(*words):
        probe = (f'source {tmp_path / "c.sh"}; COMP_WORDS=(bfn {" ".join(words)}); COMP_CWORD={len(words)}; _bfn; '
                 'echo "${COMPREPLY[@]}"')
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert complete("mod") == ["models"]
    assert complete("models", "pro") == ["promote"]
    assert complete("models", "promote", "digits", "3", "--fo") == ["--force"]
    assert "--sampler" in complete("sample", "RUN", "--")


def test_every_flag_has_help_and_steps_means_sampling_steps_everywhere():
    import argparse

    from bfn_platform.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, path + (name,))
            elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                yield path, action

    seen = list(walk(build_parser(), ("bfn",)))
    missing = [f"{' '.join(p)} {a.option_strings[0]}" for p, a in seen if not a.help]
    assert not missing, missing
    for path, action in seen:  # --steps is a number of sampling steps (or step labels), never training steps
        if "--steps" in action.option_strings:
            assert "training" not in action.help.lower(), (path, action.help)
