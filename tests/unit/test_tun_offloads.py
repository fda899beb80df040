"""TUNSETOFFLOAD negotiation: ask for the most, take less where the kernel refuses."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from wiresnake.io import tun as tunmod
from wiresnake.io.tun import Tun

CSUM, TSO4, TSO6, TSO_ECN, USO4, USO6 = 0x01, 0x02, 0x04, 0x08, 0x20, 0x40
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)


@pytest.fixture
def tun() -> Iterator[Tun]:
    # a Tun around a pipe: only the ioctl matters here, and that is replaced
    r, w = os.pipe()
    t = Tun.__new__(Tun)
    t.fd, t.offloads = r, 0
    yield t
    os.close(r)
    os.close(w)


def kernel(accepts: set[int], asked: list[int]) -> object:
    def ioctl(fd: int, request: int, arg: int) -> int:
        assert request == TUNSETOFFLOAD
        asked.append(arg)
        if arg not in accepts:
            raise OSError(errno.EINVAL, "Invalid argument")
        return 0

    return ioctl


@pytest.mark.parametrize(
    ("accepts", "expected"),
    [
        ({CSUM | TSO4 | TSO6 | TSO_ECN | USO4 | USO6}, CSUM | TSO4 | TSO6 | TSO_ECN | USO4 | USO6),
        ({CSUM | TSO4 | TSO6 | TSO_ECN}, CSUM | TSO4 | TSO6 | TSO_ECN),  # before Linux 6.2
        ({0}, 0),
        (set(), 0),  # refuses even "none": reads stay plain, nothing raises
    ],
    ids=["all", "no-uso", "none", "refuses-everything"],
)
def test_negotiation_takes_the_most_the_kernel_accepts(
    tun: Tun, monkeypatch: pytest.MonkeyPatch, accepts: set[int], expected: int
) -> None:
    asked: list[int] = []
    monkeypatch.setattr(tunmod.fcntl, "ioctl", kernel(accepts, asked))
    assert tun.negotiate_offloads() == expected
    assert tun.offloads == expected
    assert asked[0] == CSUM | TSO4 | TSO6 | TSO_ECN | USO4 | USO6  # the most, first
    assert asked == sorted(asked, reverse=True)  # then less, never more


@pytest.mark.parametrize(("value", "mode"), [(None, "1"), ("", "1"), ("0", "0"), ("tso", "tso")])
def test_offload_mode(monkeypatch: pytest.MonkeyPatch, value: str | None, mode: str) -> None:
    if value is None:
        monkeypatch.delenv("WIRESNAKE_OFFLOAD", raising=False)
    else:
        monkeypatch.setenv("WIRESNAKE_OFFLOAD", value)
    assert tunmod.offload_mode() == mode
    assert tunmod.offloads_wanted() == (mode != "0")
