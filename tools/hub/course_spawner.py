"""The spawners of the test hub: one single-user server per learner, each in a home folder of its own.

`LearnerSpawner` (the suite runs as root): JupyterHub's own LocalProcessSpawner, each learner a real Unix user (setuid),
HOME theirs. `CourseSpawner` (not root): every learner as the hub's own Unix user, each with a home folder of its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import List, Unicode, default

VENV_BIN = Path(sys.executable).parent


class CourseSpawner(SimpleLocalProcessSpawner):
    """A learner's server as the hub's own Unix user (no setuid), with HOME and COURSE_LAB_HOME of its own.

    Used where learners cannot be real Unix users (this machine's Python lives in a folder only root can enter);
    `shared_home_users` plants a collision on purpose: those learners share one COURSE_LAB_HOME."""

    homes_root = Unicode(help="Folder holding one home folder per learner").tag(config=True)
    shared_home_users = List(Unicode(), help="Learners made to share one COURSE_LAB_HOME (a planted collision)"
                             ).tag(config=True)

    @default("home_dir_template")
    def _default_home_dir_template(self) -> str:
        return str(Path(self.homes_root) / "{username}")

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return [str(VENV_BIN / "jupyterhub-singleuser")]

    def get_args(self) -> list[str]:
        """Jupyter Server refuses root unless told (this suite runs as root in CI containers)."""
        args = super().get_args()
        return [*args, "--allow-root"] if os.getuid() == 0 else args

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        """HOME is the learner's folder; progress goes to HOME/.fastapi-perf-lab as on a real hub."""
        env = super().user_env(env)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
        if self.user.name in self.shared_home_users:
            env["COURSE_LAB_HOME"] = str(Path(self.homes_root).parent / "shared-progress")  # Hub.shared_progress
        else:
            env["COURSE_LAB_HOME"] = str(Path(self.home_dir) / ".fastapi-perf-lab")
        return env

    async def start(self) -> tuple[str, int]:
        """Create the home folder first (a real hub's user has one)."""
        Path(self.home_dir).mkdir(parents=True, exist_ok=True)
        return await super().start()


class LearnerSpawner(LocalProcessSpawner):
    """A learner's server as their own Unix user (JupyterHub's LocalProcessSpawner: setuid, HOME from the password
    database), running the course's venv; `shared_lab_home` and `shared_home_users` plant a collision on purpose."""

    shared_home_users = List(Unicode(), help="Learners made to share one COURSE_LAB_HOME (a planted collision)"
                             ).tag(config=True)
    shared_lab_home = Unicode(help="The COURSE_LAB_HOME those learners share").tag(config=True)

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return [str(VENV_BIN / "jupyterhub-singleuser")]

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        """HOME, USER and SHELL are the learner's (LocalProcessSpawner); the venv first on PATH; progress in HOME."""
        env = super().user_env(env)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
        if self.user.name in self.shared_home_users:
            env["COURSE_LAB_HOME"] = self.shared_lab_home
        else:
            env["COURSE_LAB_HOME"] = str(Path(env["HOME"]) / ".fastapi-perf-lab")
        return env
