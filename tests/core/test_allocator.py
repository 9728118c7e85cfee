"""return_large_frees: freed tensors of 1 MiB or more leave the process at once (glibc), user settings win."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from prunekit.core.allocator import return_large_frees

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates and frees 8 MiB tensors after a larger free has raised glibc's dynamic mmap threshold,
# then prints how much resident memory the freed tensors left behind (MiB).
_PROBE = """
import os, sys, torch
from prunekit.core.allocator import return_large_frees
applied = return_large_frees() if sys.argv[1] == "on" else False
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
big = torch.ones(12 * 2**20 // 4); del big          # a freed mapping: the dynamic threshold rises to 12 MiB
base = rss()
kept = [torch.ones(8 * 2**20 // 4) for _ in range(6)]  # 48 MiB of 8 MiB tensors
del kept
print(applied, round(rss() - base, 1))
"""


def _left_behind(mode: str) -> tuple[bool, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env)
    applied, mib = out.stdout.split()
    return applied == "True", float(mib)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_tensors_are_given_back_only_with_the_setting():
    applied, left = _left_behind("on")
    assert applied and left < 4  # every 8 MiB tensor was its own mapping, unmapped on free
    applied, _ = _left_behind("off")
    assert not applied  # without it, how much the heap keeps depends on glibc's dynamic trim threshold


def test_user_malloc_settings_are_respected(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert return_large_frees() is False
