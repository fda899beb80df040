"""`wiresnake genkey | genpsk | pubkey` and the dispatcher, held to `wg`'s behaviour.

Expected messages and exit codes below were taken from wireguard-tools v1.0.20210914
(`wg` from Debian) and its src/pubkey.c and src/genkey.c; `test_same_as_wg` re-checks
every case against the real `wg` whenever it is installed.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiresnake import __version__, cli

# RFC 7748 section 6.1 (Curve25519 Diffie-Hellman).
RFC7748_ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
RFC7748_ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
RFC7748_BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
RFC7748_BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"


def b64(hex_key: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_key)).decode()


ALICE = b64(RFC7748_ALICE_PRIVATE)
ALICE_PUB = b64(RFC7748_ALICE_PUBLIC)

FORMAT = "wiresnake: Key is not the correct length or format\n"
TRAILING = "wiresnake: Trailing characters found after key\n"
WARNING = (
    "Warning: writing to world accessible file.\n"
    "Consider setting the umask to 077 and trying again.\n"
)

# (stdin, exit code, stdout, stderr) for `pubkey`.
A = ALICE.encode()
OK = (0, ALICE_PUB + "\n", "")
PUBKEY_CASES: dict[str, tuple[bytes, tuple[int, str, str]]] = {
    "valid": (A, OK),
    "valid-newline": (A + b"\n", OK),
    "valid-crlf": (A + b"\r\n", OK),
    "valid-trailing-spaces": (A + b"   \t\n\v\f\r \n", OK),
    "valid-trailing-nul": (A + b"\0\0\n\0", OK),
    "leading-space": (b" " + A, (1, "", TRAILING)),
    "leading-newline": (b"\n" + A, (1, "", TRAILING)),
    "truncated": (A[:43], (1, "", FORMAT)),
    "truncated-newline": (A[:43] + b"\n", (1, "", FORMAT)),
    "truncated-short": (A[:10], (1, "", FORMAT)),
    "trailing-garbage": (A + b"x", (1, "", TRAILING)),
    "trailing-space-garbage": (A + b" x", (1, "", TRAILING)),
    "two-keys": (A + b"\n" + A + b"\n", (1, "", TRAILING)),
    "trailing-high-byte": (A + b"\xe9", (1, "", TRAILING)),
    "trailing-nbsp": (A + b"\xa0", (1, "", TRAILING)),
    "trailing-nel": (A + b"\x85", (1, "", TRAILING)),
    "double-padding": (A[:42] + b"==", (1, "", FORMAT)),
    "no-padding": (A[:43] + b"A", (1, "", FORMAT)),
    "not-base64": (b"!" * 43 + b"=", (1, "", FORMAT)),
    "not-base64-and-trailing": (b"!" * 43 + b"=x", (1, "", TRAILING)),
    "padding-inside": (A[:10] + b"=" + A[11:], (1, "", FORMAT)),
    "nul-inside": (A[:10] + b"\0" + A[11:], (1, "", FORMAT)),
    "high-byte-inside": (A[:10] + b"\xe9" + A[11:], (1, "", FORMAT)),
    # Alice's key ends "sQ="; R and T only differ in the 2 bits past the key's end.
    "non-canonical-R": (A[:42] + b"R=", (1, "", FORMAT)),
    "non-canonical-T": (A[:42] + b"T=", (1, "", FORMAT)),
    "hex-key": (RFC7748_ALICE_PRIVATE.encode(), (1, "", TRAILING)),
    "empty": (b"", (1, "", FORMAT)),
    "newline-only": (b"\n", (1, "", FORMAT)),
    # Unclamped keys are clamped by X25519 itself, as in wg.
    "zero-key": (
        b"A" * 43 + b"=",
        (0, "L+V9o0fNYkMVKNqsX7spBzD/9oSvxM/C7ZCZX1jLO3Q=\n", ""),
    ),
    "ones-key": (
        b"/" * 42 + b"8=",
        (0, "hHwNLDdSNPNl5mCVUYejc1oPdhPRYJ06ak2MU66qWiI=\n", ""),
    ),
}

# Extra arguments: a usage line on stderr and 1, even for --help, whatever is on stdin.
ARG_CASES: dict[str, tuple[list[str], str]] = {
    "pubkey-extra": (["pubkey", "x"], "Usage: wiresnake pubkey\n"),
    "pubkey-help": (["pubkey", "--help"], "Usage: wiresnake pubkey\n"),
    "genkey-extra": (["genkey", "x"], "Usage: wiresnake genkey\n"),
    "genkey-help": (["genkey", "--help"], "Usage: wiresnake genkey\n"),
    "genpsk-extra": (["genpsk", "x", "y"], "Usage: wiresnake genpsk\n"),
}


def set_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def is_clamped(key: bytes) -> bool:
    return key[0] & 7 == 0 and key[31] & 0x80 == 0 and key[31] & 0x40 != 0


def decode_line(out: str) -> bytes:
    assert len(out) == 45
    assert out.endswith("\n")
    key = base64.b64decode(out[:-1], validate=True)
    assert len(key) == 32
    assert base64.b64encode(key).decode() == out[:-1]
    return key


# --- genkey / genpsk -----------------------------------------------------------------


def test_genkey_is_a_clamped_key(capsys: pytest.CaptureFixture[str]) -> None:
    keys = set()
    for _ in range(32):
        assert cli.main(["genkey"]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        key = decode_line(out)
        assert is_clamped(key)
        keys.add(key)
    assert len(keys) == 32


def test_genkey_clamps_and_genpsk_does_not(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "urandom", lambda n: b"\xff" * n)
    assert cli.main(["genkey"]) == 0
    clamped = b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert capsys.readouterr().out == base64.b64encode(clamped).decode() + "\n"
    assert cli.main(["genpsk"]) == 0
    assert capsys.readouterr().out == base64.b64encode(b"\xff" * 32).decode() + "\n"


def test_genpsk_is_32_random_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    keys = []
    for _ in range(32):
        assert cli.main(["genpsk"]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        keys.append(decode_line(out))
    assert len(set(keys)) == 32
    # A clamped key has 5 fixed bits; 32 random keys all looking clamped is a 2^-160 event.
    assert not all(is_clamped(k) for k in keys)


def test_genkey_random_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(n: int) -> bytes:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "urandom", broken)
    assert cli.main(["genkey"]) == 1
    assert capsys.readouterr() == ("", "getrandom: Function not implemented\n")


@pytest.mark.parametrize("cmd", ["genkey", "genpsk"])
@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o644, True), (0o666, True), (0o601, True), (0o604, True), (0o640, False), (0o600, False)],
)
def test_world_accessible_warning(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cmd: str,
    mode: int,
    warned: bool,
) -> None:
    path = tmp_path / "key"
    path.touch()
    path.chmod(mode)
    with path.open("w") as f:
        monkeypatch.setattr(sys, "stdout", f)
        assert cli.main([cmd]) == 0
    assert capsys.readouterr().err == (WARNING if warned else "")
    decode_line(path.read_text())


# --- pubkey --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("private_hex", "public_hex"),
    [(RFC7748_ALICE_PRIVATE, RFC7748_ALICE_PUBLIC), (RFC7748_BOB_PRIVATE, RFC7748_BOB_PUBLIC)],
)
def test_pubkey_rfc7748(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    private_hex: str,
    public_hex: str,
) -> None:
    set_stdin(monkeypatch, b64(private_hex).encode() + b"\n")
    assert cli.main(["pubkey"]) == 0
    assert capsys.readouterr() == (b64(public_hex) + "\n", "")


def test_genkey_pubkey_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(8):
        assert cli.main(["genkey"]) == 0
        private = capsys.readouterr().out
        set_stdin(monkeypatch, private.encode())
        assert cli.main(["pubkey"]) == 0
        public = decode_line(capsys.readouterr().out)
        raw = base64.b64decode(private)
        assert public == X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()


@pytest.mark.parametrize("name", list(PUBKEY_CASES))
def test_pubkey_inputs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    data, (code, out, err) = PUBKEY_CASES[name]
    set_stdin(monkeypatch, data)
    assert cli.main(["pubkey"]) == code
    assert capsys.readouterr() == (out, err)


def test_pubkey_stdin_closed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    assert cli.main(["pubkey"]) == 1
    assert capsys.readouterr() == ("", FORMAT)


@pytest.mark.parametrize("name", list(ARG_CASES))
def test_extra_arguments(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    args, err = ARG_CASES[name]
    set_stdin(monkeypatch, A + b"\n")
    assert cli.main(args) == 1
    assert capsys.readouterr() == ("", err)


def test_decode_key_strict_accepts_only_canonical_keys() -> None:
    for i in range(256):
        key = bytes([i]) * 31 + bytes([255 - i])
        assert cli.decode_key_strict(base64.b64encode(key)) == key
    assert cli.decode_key_strict(A[:42] + b"R=") is None
    assert cli.decode_key_strict(A + b"\n") is None
    assert cli.decode_key_strict(b" " + A[1:]) is None


# --- the dispatcher ------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["-h", "--help", "help"])
def test_help(capsys: pytest.CaptureFixture[str], arg: str) -> None:
    assert cli.main([arg]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("Usage: wiresnake <cmd> [<args>]\n")
    for name in ("genkey", "genpsk", "pubkey"):
        assert f"\n  {name}: " in out


@pytest.mark.parametrize("arg", ["-v", "--version", "version"])
def test_version(capsys: pytest.CaptureFixture[str], arg: str) -> None:
    assert cli.main([arg]) == 0
    assert capsys.readouterr() == (f"wiresnake v{__version__}\n", "")


# a lone word that could be an interface name starts the daemon, so these cannot be
@pytest.mark.parametrize("args", [["frobnicate-the-widget"], ["--help", "x"], ["--bogus"]])
def test_unknown_subcommand(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"Invalid subcommand: `{args[0]}'\n" + cli.usage_text()


def test_no_arguments_shows_all_interfaces_like_wg(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WG_SOCKET_DIR", str(tmp_path))  # no interfaces there
    assert cli.main([]) == 0
    assert capsys.readouterr() == ("", "")


def test_main_reads_sys_argv(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["wiresnake", "--version"])
    assert cli.main() == 0
    assert capsys.readouterr().out == f"wiresnake v{__version__}\n"


# --- the installed console script, and wg itself ---------------------------------------


def console_script() -> str:
    for candidate in (Path(sysconfig.get_path("scripts")) / "wiresnake", shutil.which("wiresnake")):
        if candidate is not None and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip("the wiresnake console script is not installed")


def run(argv: list[str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=data, capture_output=True, timeout=60, check=False)


def test_console_script(tmp_path: Path) -> None:
    exe = console_script()
    r = run([exe, "genkey"])
    assert (r.returncode, r.stderr) == (0, b"")
    private = r.stdout
    assert is_clamped(decode_line(private.decode()))
    r = run([exe, "pubkey"], private)
    assert r.returncode == 0
    assert decode_line(r.stdout.decode())

    r = run([exe, "pubkey"], A + b"\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, ALICE_PUB.encode() + b"\n", b"")
    r = run([exe, "pubkey"], A + b"x")
    assert (r.returncode, r.stdout, r.stderr) == (1, b"", TRAILING.encode())

    # To a file: the warning depends on the file's mode, so on the umask.
    for umask, expect in ((0o022, WARNING.encode()), (0o077, b"")):
        path = tmp_path / f"key-{umask:o}"
        cmd = f"umask {umask:o}; exec {exe} genpsk > {path}"
        r = run(["sh", "-c", cmd])
        assert (r.returncode, r.stderr) == (0, expect)
        decode_line(path.read_text())


def test_console_script_slow_writer() -> None:
    """A key arriving in pieces, as typed on a terminal or sent down a slow pipe."""
    exe = console_script()
    with subprocess.Popen(
        [exe, "pubkey"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as p:
        assert p.stdin is not None
        for piece in (A[:20], A[20:] + b"\n", b"  \n"):
            p.stdin.write(piece)
            p.stdin.flush()
            time.sleep(0.05)
        out, err = p.communicate(timeout=60)
    assert (p.returncode, out, err) == (0, ALICE_PUB.encode() + b"\n", b"")


def test_console_script_write_error() -> None:
    """wg exits 0 when its key cannot be written (to /dev/full); we refuse to."""
    exe = console_script()
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "wb") as full:
        r = subprocess.run(
            [exe, "genkey"], stdout=full, stderr=subprocess.PIPE, timeout=60, check=False
        )
    assert r.returncode == 1
    assert r.stderr == b"wiresnake: write error: No space left on device\n"


WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="wg (wireguard-tools) is not installed")


def as_wiresnake(wg_stderr: bytes) -> bytes:
    """wg's messages with its program name (argv[0], "wg" here) replaced by ours."""
    lines = wg_stderr.decode().splitlines(keepends=True)
    out = []
    for line in lines:
        if line.startswith("wg: "):
            line = "wiresnake: " + line[4:]
        elif line.startswith("Usage: wg "):
            line = "Usage: wiresnake " + line[10:]
        out.append(line)
    return "".join(out).encode()


@pytest.mark.interop
@needs_wg
@pytest.mark.parametrize(
    ("args", "data"),
    [(["pubkey"], data) for data, _ in PUBKEY_CASES.values()]
    + [(args, A + b"\n") for args, _ in ARG_CASES.values()],
    ids=list(PUBKEY_CASES) + list(ARG_CASES),
)
def test_same_as_wg(args: list[str], data: bytes) -> None:
    ours = run([console_script(), *args], data)
    theirs = run(["wg", *args], data)
    assert ours.returncode == theirs.returncode
    assert ours.stdout == theirs.stdout
    assert ours.stderr == as_wiresnake(theirs.stderr)


@pytest.mark.interop
@needs_wg
def test_pubkey_of_wg_genkey() -> None:
    exe = console_script()
    for _ in range(4):
        private = run(["wg", "genkey"]).stdout
        assert is_clamped(decode_line(private.decode()))
        assert run([exe, "pubkey"], private).stdout == run(["wg", "pubkey"], private).stdout


@pytest.mark.interop
@needs_wg
@pytest.mark.parametrize("cmd", ["genkey", "genpsk"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o602, 0o600])
def test_warning_same_as_wg(tmp_path: Path, cmd: str, mode: int) -> None:
    results = []
    for prog in ("wg", console_script()):
        path = tmp_path / "key"
        path.unlink(missing_ok=True)
        path.touch()
        path.chmod(mode)
        with path.open("ab") as f:
            r = subprocess.run(
                [prog, cmd], stdout=f, stderr=subprocess.PIPE, timeout=60, check=False
            )
        decode_line(path.read_text())
        results.append((r.returncode, r.stderr))
    assert results[0] == results[1]


def test_ctrl_c_is_one_line_and_status_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from wiresnake import config

    def interrupted(*args: object, **kw: object) -> tuple[str, int]:
        raise KeyboardInterrupt  # as Ctrl-C during a retry's pause

    monkeypatch.setattr(config, "resolve_endpoint", interrupted)
    argv = ["set", "wg0", "peer", ALICE_PUB, "endpoint", "vpn.example:51820"]
    try:
        rc = cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped, to end as a traceback")
    assert rc == 130
    assert capsys.readouterr() == ("", "wiresnake: interrupted\n")
