"""Two real Unix users in one group sharing a cache folder, as teams do.

:func:`team` (root only: CI runs the tests as root) creates the users ``se3t-a`` and ``se3t-b``
in the group ``se3t-team`` once, and a group-shared folder (setgid, group-writable) with a home
for each user; :meth:`Team.run` and :meth:`Team.spawn` run a command as one of them with
``setpriv`` (real uid, gid and supplementary groups) under the umask a site would use.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GROUP = "se3t-team"
USERS = ("se3t-a", "se3t-b")
SITE_UMASK = "0002"  # a group-shared site: files group-writable, nothing for others


def _ensure_accounts() -> None:
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(
                ["useradd", "--no-create-home", "--gid", GROUP, "--shell", "/bin/sh", user],
                check=True,
            )


def _closed_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that others cannot traverse (``/root``, when the
    interpreter was installed by pyenv as root)."""
    return [f for f in path.parents if not os.stat(f).st_mode & 0o001]


@contextlib.contextmanager
def reachable(*paths: Path):
    """Others may traverse (search, not list) the folders above ``paths`` while the block runs:
    the interpreter and the repository must be reachable by the test users. Modes restored
    afterwards."""
    saved = {f: os.stat(f).st_mode for p in paths for f in _closed_folders(p)}
    try:
        for folder, mode in saved.items():
            os.chmod(folder, mode | 0o001)
        yield
    finally:
        for folder, mode in saved.items():
            os.chmod(folder, stat.S_IMODE(mode))


@dataclass
class Team:
    root: Path  # the group-shared folder: setgid, group-writable

    def home(self, user: str) -> Path:
        return self.root / f"home-{user}"

    def _argv(self, user: str, args: list[str], umask: str, extra: dict | None) -> list[str]:
        pw = pwd.getpwnam(user)
        env = {
            **(extra or {}),
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(self.home(user)),
            "XDG_CACHE_HOME": str(self.home(user) / ".cache"),
            "PYTHONPATH": str(REPO),
            # these tests check files, claims and leases, not sums: one thread each keeps two
            # users' concurrent processes from oversubscribing a 2-core machine (the thread-order
            # tests run at 2 threads: tests/train/test_train_resume.py)
            "OMP_NUM_THREADS": "1",
            "USER": user,
            "LOGNAME": user,
        }
        return [
            "setpriv",
            f"--reuid={pw.pw_uid}",
            f"--regid={pw.pw_gid}",
            "--init-groups",
            "--",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            "sh",
            "-c",
            f'umask {umask} && exec "$@"',
            "sh",
            *args,
        ]

    def run(
        self,
        user: str,
        *args: str,
        umask: str = SITE_UMASK,
        timeout: float = 300,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        """``args`` run as ``user`` (cwd: the repository; ``env``: more variables, such as
        credentials); returns the finished process."""
        return subprocess.run(
            self._argv(user, list(args), umask, env),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(
        self, user: str, *args: str, umask: str = SITE_UMASK, env: dict | None = None
    ) -> subprocess.Popen:
        return subprocess.Popen(
            self._argv(user, list(args), umask, env),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def se3t(self, user: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(user, sys.executable, "-m", "se3t.cli", *args, **kw)

    def share(self, path: Path) -> Path:
        """A copy of ``path`` (a dataset store) inside the shared folder, readable by both."""
        dest = self.root / path.name
        shutil.copytree(path, dest)
        subprocess.run(["chgrp", "-R", GROUP, str(dest)], check=True)
        subprocess.run(["chmod", "-R", "g+rX", str(dest)], check=True)
        return dest


def team() -> Team:
    """The two users and a fresh group-shared folder; skips (with the reason) where that
    cannot be set up."""
    if os.geteuid() != 0:
        pytest.skip("two-user tests need root to create the users (CI runs them as root)")
    for tool in ("setpriv", "useradd", "groupadd"):
        if shutil.which(tool) is None:
            pytest.skip(f"two-user tests need {tool} (util-linux, passwd)")
    _ensure_accounts()
    root = Path(tempfile.mkdtemp(prefix="se3t-team-", dir="/tmp"))
    shutil.chown(root, group=GROUP)
    os.chmod(root, 0o2770)  # setgid: everything below belongs to the group
    for user in USERS:
        home = root / f"home-{user}"
        home.mkdir()
        shutil.chown(home, user=user, group=GROUP)
        os.chmod(home, 0o700)
    return Team(root)
