"""JupyterHub for the hub test (tests/test_hub.py): loopback only, learners from COURSE_HUB_USERS, an admin service.

Everything comes from environment variables set by the test (or tools/hub/hub_lab.py's `Hub`):
COURSE_HUB_ROOT (a private temporary folder), COURSE_HUB_PORT / COURSE_HUB_API_PORT / COURSE_HUB_PROXY_API_PORT,
COURSE_HUB_ADMIN_TOKEN, COURSE_HUB_USERS (comma-separated), COURSE_HUB_SHARED_HOME_USERS (planted collision),
COURSE_HUB_CHP (the configurable-http-proxy executable), COURSE_HUB_CULL_USERS (learners jupyterhub-idle-culler may
cull: its token's scopes are limited to them) with COURSE_HUB_CULL_TIMEOUT (seconds idle), COURSE_HUB_REAL_USERS=1 when
the learners are real Unix users (the hub runs as root and spawns each as its user), then COURSE_HUB_SHARED_LAB_HOME."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

c = get_config()  # type: ignore[name-defined]  # noqa: F821 - provided by JupyterHub when it loads this file
root = Path(os.environ["COURSE_HUB_ROOT"])
users = {name for name in os.environ["COURSE_HUB_USERS"].split(",") if name}

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ["COURSE_HUB_PORT"])
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["COURSE_HUB_API_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['COURSE_HUB_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.command = [os.environ.get("COURSE_HUB_CHP", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.auth_token = os.urandom(16).hex()
c.JupyterHub.db_url = f"sqlite:///{root / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret = os.urandom(32)
c.JupyterHub.pid_file = str(root / "jupyterhub.pid")
c.JupyterHub.log_level = "INFO"
c.JupyterHub.last_activity_interval = 5

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = users
c.DummyAuthenticator.password = os.urandom(16).hex()  # nobody logs in by form: the test uses API tokens

c.JupyterHub.services = [{"name": "course-admin", "api_token": os.environ["COURSE_HUB_ADMIN_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": "admin", "services": ["course-admin"]}]

cull = [name for name in os.environ.get("COURSE_HUB_CULL_USERS", "").split(",") if name]
if cull:  # the real culler, as Zero to JupyterHub runs it, seeing only these learners
    timeout = os.environ.get("COURSE_HUB_CULL_TIMEOUT", "10")
    c.JupyterHub.services.append({"name": "idle-culler", "command": [
        sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={timeout}", "--cull-every=3"]})
    c.JupyterHub.load_roles.append({"name": "idle-culler", "services": ["idle-culler"], "scopes": [
        scope for name in cull for scope in (f"list:users!user={name}", f"read:users:activity!user={name}",
                                             f"read:servers!user={name}", f"delete:servers!user={name}")]})

shared = [n for n in os.environ.get("COURSE_HUB_SHARED_HOME_USERS", "").split(",") if n]
if os.environ.get("COURSE_HUB_REAL_USERS") == "1":  # each learner a Unix user: JupyterHub's LocalProcessSpawner
    c.JupyterHub.spawner_class = "course_spawner.LearnerSpawner"
    c.LearnerSpawner.shared_home_users = shared
    c.LearnerSpawner.shared_lab_home = os.environ.get("COURSE_HUB_SHARED_LAB_HOME", "")
else:  # everyone the hub's own user, a home folder each
    c.JupyterHub.spawner_class = "course_spawner.CourseSpawner"
    c.CourseSpawner.homes_root = str(root / "home")
    c.CourseSpawner.shared_home_users = shared
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
# no DATABASE_URL / REDIS_URL of the test run; PYTHONPATH, if set, names the course under test
c.Spawner.env_keep = ["PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH"]
