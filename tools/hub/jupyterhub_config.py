"""JupyterHub for the hub test (tests/test_hub.py): loopback only, learners from COURSE_HUB_USERS, an admin service.

Everything comes from environment variables set by the test (or tools/hub/hub_lab.py's `Hub`):
COURSE_HUB_ROOT (a private temporary folder), COURSE_HUB_PORT / COURSE_HUB_API_PORT / COURSE_HUB_PROXY_API_PORT,
COURSE_HUB_ADMIN_TOKEN, COURSE_HUB_USERS (comma-separated), COURSE_HUB_SHARED_HOME_USERS (planted collision),
COURSE_HUB_CHP (the configurable-http-proxy executable)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
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

c.JupyterHub.spawner_class = "course_spawner.CourseSpawner"
c.CourseSpawner.homes_root = str(root / "home")
c.CourseSpawner.shared_home_users = [n for n in os.environ.get("COURSE_HUB_SHARED_HOME_USERS", "").split(",") if n]
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.Spawner.env_keep = ["PATH", "LANG", "LC_ALL", "VIRTUAL_ENV"]  # no DATABASE_URL / REDIS_URL of the test run
