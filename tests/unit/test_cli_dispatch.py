"""What a lone word does (a daemon, or "Invalid subcommand"), `--help` and `--version`."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from wiresnake import cli, daemon

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "wiresnake"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], bool]]:
    """Daemons `main` would start, as (argv, announce); none really starts."""
    calls: list[tuple[list[str], bool]] = []

    def fake_main(argv: list[str], *, announce: bool = False) -> int:
        calls.append((argv, announce))
        return 0

    monkeypatch.setattr(daemon, "main", fake_main)
    monkeypatch.delenv(cli.WG_QUICK_ENV, raising=False)
    monkeypatch.delenv("WG_TUN_FD", raising=False)
    return calls


@pytest.mark.parametrize(
    ("word", "suggestion"),
    [
        ("shwo", "show"),
        ("Show", "show"),
        ("strp", "strip"),
        ("donw", "down"),
        ("syncconfig", "syncconf"),
        ("genkeys", "genkey"),
        ("proxi", "proxy"),
        ("showconfig", "showconf"),
    ],
)
def test_a_word_close_to_a_subcommand_is_refused(
    word: str,
    suggestion: str,
    started: list[tuple[list[str], bool]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main([word]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"Invalid subcommand: `{word}'; did you mean `{suggestion}'?\n")
    assert cli.usage_text() in err
    assert f"`wiresnake -f {word}' starts a daemon" in err
    assert started == []


@pytest.mark.parametrize("word", ["start", "stop", "status", "list", "mesh", "Delete", "keys"])
def test_a_reserved_word_is_refused(
    word: str, started: list[tuple[list[str], bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([word]) == 1
    assert capsys.readouterr().err.startswith(f"Invalid subcommand: `{word}'\n")
    assert started == []


@pytest.mark.parametrize("word", ["wg0", "home", "vpn", "office", "frobnicate", "down0", "up1"])
def test_an_interface_name_starts_the_daemon(
    word: str, started: list[tuple[list[str], bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([word]) == 0
    assert started == [([word], False)]  # not on a terminal here: nothing said
    assert capsys.readouterr() == ("", "")


def test_wg_quick_names_are_taken_as_they_are(
    started: list[tuple[list[str], bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # wg-quick runs `$WG_QUICK_USERSPACE_IMPLEMENTATION IFACE` for /etc/wireguard/IFACE.conf
    monkeypatch.setenv(cli.WG_QUICK_ENV, "wiresnake")
    monkeypatch.setattr(cli, "_stderr_is_terminal", lambda: True)
    assert cli.main(["sets"]) == 0
    assert cli.main(["stop"]) == 0
    assert started == [(["sets"], False), (["stop"], False)]


def test_foreground_takes_any_name_but_a_subcommand(
    started: list[tuple[list[str], bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-f", "shwo"]) == 0
    assert cli.main(["--foreground", "start"]) == 0
    assert started == [(["-f", "shwo"], False), (["--foreground", "start"], False)]
    assert cli.main(["-f", "show"]) == 1
    assert capsys.readouterr().err == "`show' is a subcommand, not an interface name\n"
    assert len(started) == 2


def test_a_daemon_started_from_a_terminal_says_so(
    started: list[tuple[list[str], bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_stderr_is_terminal", lambda: True)
    assert cli.main(["frobnicate"]) == 0
    assert started == [(["frobnicate"], True)]
    monkeypatch.setenv("WG_TUN_FD", "3")  # the re-executed child: its parent spoke already
    assert cli.main(["frobnicate"]) == 0
    assert started[-1] == (["frobnicate"], False)


def test_the_rule_leaves_names_alone() -> None:
    env: dict[str, str] = {}
    for word in ("wg0", "home", "vpn", "work", "mullvad", "uplink", "tun0", "down0", "wgquick"):
        assert cli.daemon_refusal(word, explicit=False, env=env) is None, word


# --- --help and --version --------------------------------------------------------------

_ENV_SHAPED = re.compile(r"(?:WG|WIRESNAKE)_[A-Z0-9_]+")


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "TEXT" assignments."""
    found: dict[str, str] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            found[target.id] = str(value.value)
    return found


def _key(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def environment_variables_read() -> set[str]:
    """Every environment variable the source reads: the key of `os.environ.get(...)`,
    `os.getenv(...)`, `env.get(...)`, `os.environ[...]`, `.pop(...)` on anything named
    like an environment, given as text or as a module constant, and every string literal
    shaped like one of ours (WG_..., WIRESNAKE_...)."""
    names: set[str] = set()
    trees = [ast.parse(path.read_text(), str(path)) for path in SRC.rglob("*.py")]
    # `__all__` names constants such as WG_QUICK_KEYS: text shaped like a variable that is
    # the name of something in the code is not a variable
    defined = {n.id for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for tree in trees:
        constants = _constants(tree)
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and _ENV_SHAPED.fullmatch(text) and text not in defined:
                names.add(text)
            key = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                receiver = ast.unparse(node.func.value).lower()
                reads = node.func.attr in ("get", "pop", "setdefault") and "env" in receiver
                if reads or node.func.attr == "getenv":
                    key = _key(node.args[0], constants)
            if isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
                key = _key(node.slice, constants)
            if key is not None:
                names.add(key)
    return names


def test_the_scan_finds_what_the_code_reads() -> None:
    found = environment_variables_read()
    # one of each way they are read: literal, module constant, constant of another module
    assert {"LOG_LEVEL", "WIRESNAKE_OFFLOAD", "WIRESNAKE_BUSY_POLL_US", "HOME"} <= found
    assert "WG_UAPI_FD" in found and "WG_ENDPOINT_RESOLUTION_RETRIES" in found


def test_help_names_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    env_section = out[out.index("\nEnvironment:\n") :]
    listed = set(re.findall(r"^  ([A-Z][A-Z0-9_]*)\b", env_section, re.M))
    assert sorted(environment_variables_read() - listed) == []
    assert "Daemon mode" in out and "wiresnake -f wg0" in out
    # and the man page documents them too
    page = (SRC / "data" / "man" / "wiresnake.8").read_text()
    assert [n for n in environment_variables_read() - {"HOME"} if n not in page] == []


def test_help_lines_fit_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["--help"])
    text = capsys.readouterr().out
    tail = text[text.index("Daemon mode") :]
    assert max(len(line) for line in tail.splitlines()) <= 80


def test_one_version_string(capsys: pytest.CaptureFixture[str]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert importlib.metadata.version("wiresnake") == version
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"wiresnake v{version}\n"
    # pyproject.toml holds it; the code asks the package metadata, never repeats it
    repeats = [p for p in SRC.rglob("*.py") if f'"{version}"' in p.read_text()]
    assert repeats == []
