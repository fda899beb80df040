"""What ships beside the code: man pages, bash completion, systemd units, the licence;
`wiresnake install-extras` putting them in place, and the wheel and sdist carrying them."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from wiresnake import cli, extras

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "wiresnake" / "data"
MAN_PAGES = sorted((DATA / "man").glob("*.8"))
BIN = "/opt/wiresnake/bin/wiresnake"

SHIPPED = (
    "man/wiresnake.8",
    "man/wiresnake-proxy.8",
    "completion/wiresnake",
    "systemd/wiresnake@.service",
    "systemd/wiresnake-proxy@.service",
    "systemd/wg-quick@.service.d/wiresnake.conf",
)


def test_every_extra_is_installed() -> None:
    assert sorted(e.source for e in extras.EXTRAS) == sorted(SHIPPED)
    assert [p.name for p in MAN_PAGES] == ["wiresnake-proxy.8", "wiresnake.8"]


@pytest.mark.parametrize("page", MAN_PAGES, ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page: Path) -> None:
    if shutil.which("man") is None or shutil.which("groff") is None:
        pytest.fail("man-db and groff-base are needed (.ci/run installs them)")
    res = subprocess.run(
        ["man", "-l", "--warnings", str(page)],
        capture_output=True,
        text=True,
        env=dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8"),
        timeout=60,
        check=False,
    )
    assert (res.returncode, res.stderr) == (0, "")
    assert "SYNOPSIS" in res.stdout and "wiresnake" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80


def _install(root: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert cli.main(["install-extras", "--root", str(root), "--bin", BIN]) == 0
    return capsys.readouterr().out.splitlines()


def test_install_extras_into_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = _install(tmp_path, capsys)
    expected = [
        "etc/systemd/system/wiresnake@.service",
        "etc/systemd/system/wiresnake-proxy@.service",
        "etc/systemd/system/wg-quick@.service.d/wiresnake.conf",
        "usr/local/share/man/man8/wiresnake.8",
        "usr/local/share/man/man8/wiresnake-proxy.8",
        "usr/local/share/bash-completion/completions/wiresnake",
    ]
    assert written == [str(tmp_path / p) for p in expected]
    for p in expected:
        st = (tmp_path / p).stat()
        assert st.st_mode & 0o777 == 0o644
    assert (tmp_path / expected[3]).read_bytes() == (DATA / "man/wiresnake.8").read_bytes()
    for unit in expected[:3]:
        text = (tmp_path / unit).read_text()
        assert extras.PLACEHOLDER not in text and BIN in text
    # a prefix moves man pages and completion only; installing twice replaces the files
    assert (
        cli.main(["install-extras", "--root", str(tmp_path), "--prefix", "/usr", "--bin", BIN]) == 0
    )
    assert (tmp_path / "usr/share/man/man8/wiresnake-proxy.8").is_file()
    assert (tmp_path / "etc/systemd/system/wiresnake@.service").is_file()


def test_install_extras_refuses_a_relative_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["install-extras", "--root", str(tmp_path), "--bin", "wiresnake"]) == 1
    assert "absolute path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(), str(path))
    return parser


def test_units_say_what_they_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _install(tmp_path, capsys)
    system = tmp_path / "etc/systemd/system"
    up = _unit(system / "wiresnake@.service")["Service"]
    assert up["ExecStart"] == f"{BIN} up %i" and up["ExecStop"] == f"{BIN} down %i"
    assert f"{BIN} strip %i" in up["ExecReload"] and up["Type"] == "oneshot"
    proxy = _unit(system / "wiresnake-proxy@.service")["Service"]
    assert proxy["DynamicUser"] == "yes"
    assert proxy["LoadCredential"] == "config:/etc/wiresnake/%i.conf"
    assert proxy["ExecStart"] == f"{BIN} proxy %d/config"
    drop_in = _unit(system / "wg-quick@.service.d/wiresnake.conf")["Service"]
    assert drop_in["Environment"] == f"WG_QUICK_USERSPACE_IMPLEMENTATION={BIN}"


def test_units_pass_systemd_analyze_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the units are parsed above)")
    # verify wants the command to exist: the console script of this environment
    exe = extras.command_path() or sys.executable
    assert cli.main(["install-extras", "--root", str(tmp_path), "--bin", exe]) == 0
    capsys.readouterr()
    system = tmp_path / "etc/systemd/system"
    for template, instance in (("wiresnake@", "wg0"), ("wiresnake-proxy@", "office")):
        shutil.copy(system / f"{template}.service", system / f"{template}{instance}.service")
    res = subprocess.run(
        [
            analyze,
            "verify",
            "--man=no",
            str(system / "wiresnake@wg0.service"),
            str(system / "wiresnake-proxy@office.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (res.returncode, res.stderr) == (0, "")


def _complete(words: list[str]) -> list[str]:
    script = DATA / "completion" / "wiresnake"
    quoted = " ".join(f"'{w}'" for w in words)
    res = subprocess.run(
        [
            "bash",
            "-c",
            f'source "{script}"; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; '
            '_wiresnake; printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert res.stderr == ""
    return sorted(filter(None, res.stdout.splitlines()))


def test_bash_completion() -> None:
    assert _complete(["wiresnake", "sh"]) == ["show", "showconf"]
    assert _complete(["wiresnake", "s"]) == [
        "save",
        "set",
        "setconf",
        "show",
        "showconf",
        "strip",
        "syncconf",
    ]
    assert _complete(["wiresnake", "show", "wg0", "end"]) == ["endpoints"]
    assert _complete(["wiresnake", "install-extras", "--r"]) == ["--root"]


def test_wheel_and_sdist_carry_the_extras_and_the_licence(tmp_path: Path) -> None:
    """Built as a user would (`python -m build`: the sdist, then the wheel from it)."""
    res = subprocess.run(
        [sys.executable, "-m", "build", "-o", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    (sdist,) = tmp_path.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n\nCopyright (c) 2026 the wiresnake developers\n")
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/licenses/LICENSE").decode() == licence
    assert sorted(n for n in names if n.startswith("wiresnake/data/")) == sorted(
        f"wiresnake/data/{s}" for s in SHIPPED
    )
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "Project-URL: Source, https://github.com/wiresnake/wiresnake" in metadata
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata
    assert "Provides-Extra: test" in metadata and "Provides-Extra: lint" in metadata
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert "LICENSE" in members
    assert {f"src/wiresnake/data/{s}" for s in SHIPPED} <= members


def test_docs_stay_in_the_repository() -> None:
    """The README and docs/ name files of this repository, not of the machine it grew on."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert ROOT / "docs" / "design.md" in texts
    for path in texts:
        text = path.read_text()
        assert "../shared" not in text and "/work/" not in text, path
    readme = (ROOT / "README.md").read_text()
    assert "docs/design.md" in readme
    assert "wiresnake up wg0.conf" not in readme  # a bare word is a name, as in wg-quick
