"""Fixtures shared by the whole suite: personas, real services, a real Celery worker.

``FLOPWATCH_REQUIRE_ALL=1`` (set by CI) turns every "service or tool missing" skip into a
failure, so a green CI run means every test really ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
REQUIRE_ALL = os.environ.get("FLOPWATCH_REQUIRE_ALL") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip the test when ``condition`` is false, or fail it when CI requires everything."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"FLOPWATCH_REQUIRE_ALL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    return path


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The production hasher takes ~0.5 s a password on these machines, on purpose.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def shared_fixtures() -> Path:
    require(SHARED_FIXTURES.is_dir(), f"real-world fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


def database_is_postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


@pytest.fixture
def postgres_only(db):
    require(database_is_postgres(), "this test needs PostgreSQL (set DATABASE_URL)")


@pytest.fixture
def postgres_committed(transactional_db):
    """PostgreSQL with committed transactions: for tests whose work runs on connections of
    its own (a split rollup's parts, a push beside a running rollup)."""
    require(database_is_postgres(), "this test needs PostgreSQL (set DATABASE_URL)")


@pytest.fixture
def redis_url() -> str:
    from django.conf import settings

    require(bool(settings.REDIS_URL), "REDIS_URL is not set")
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        require(False, f"Redis at {settings.REDIS_URL} does not answer: {exc}")
    return settings.REDIS_URL


# --- Personas ---------------------------------------------------------------------------------


@dataclass
class Personas:
    """A small organisation: two teams, three projects and one user per role."""

    team_a: object
    team_b: object
    project_a1: object
    project_a2: object
    project_b1: object
    admin: object
    finance: object
    owner: object
    member: object
    manager: object
    outsider: object
    nobody: object

    def all_users(self) -> dict[str, object]:
        return {
            name: getattr(self, name)
            for name in ("admin", "finance", "owner", "member", "manager", "outsider", "nobody")
        }


PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def personas(db) -> Personas:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from apps.tenancy.models import Membership, Project, Team
    from apps.tenancy.roles import FINANCE_GROUP, FLEET_ADMINS_GROUP, role_groups_ensure

    role_groups_ensure()
    User = get_user_model()

    def user(name: str):
        return User.objects.create_user(name, f"{name}@example.com", PASSWORD)

    team_a = Team.objects.create(slug="team-a", name="Team A", cost_center="CC-A")
    team_b = Team.objects.create(slug="team-b", name="Team B", cost_center="CC-B")
    project_a1 = Project.objects.create(team=team_a, slug="a1", name="Project A1")
    project_a2 = Project.objects.create(team=team_a, slug="a2", name="Project A2")
    project_b1 = Project.objects.create(team=team_b, slug="b1", name="Project B1")

    admin = user("admin")
    admin.is_staff = True
    admin.save()
    admin.groups.add(Group.objects.get(name=FLEET_ADMINS_GROUP))
    finance = user("finance")
    finance.is_staff = True
    finance.save()
    finance.groups.add(Group.objects.get(name=FINANCE_GROUP))
    owner = user("owner")
    project_a1.owners.add(owner)
    member = user("member")
    Membership.objects.create(user=member, team=team_a, role=Membership.Role.MEMBER)
    manager = user("manager")
    Membership.objects.create(user=manager, team=team_a, role=Membership.Role.MANAGER)
    outsider = user("outsider")
    Membership.objects.create(user=outsider, team=team_b, role=Membership.Role.MEMBER)
    nobody = user("nobody")
    return Personas(
        team_a,
        team_b,
        project_a1,
        project_a2,
        project_b1,
        admin,
        finance,
        owner,
        member,
        manager,
        outsider,
        nobody,
    )


# --- A real Celery worker ---------------------------------------------------------------------


def test_database_url() -> str:
    """A URL for the database the tests are using, for processes the tests start."""
    from django.db import connection

    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or "postgres"
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else f"{user}@"
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


test_database_url.__test__ = False  # not a test, despite the name


@dataclass
class WorkerHandle:
    process: subprocess.Popen
    queue: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_celery_worker(*, queue: str, log_path: Path, extra_env: dict | None = None):
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": test_database_url(),
            "FLOPWATCH_CELERY_QUEUE": queue,
            "FLOPWATCH_ENV": "test",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    log_file = log_path.open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "apps",
            "worker",
            "--pool",
            "solo",
            "--queues",
            queue,
            "--hostname",
            f"{queue}@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def celery_worker(transactional_db, redis_url, tmp_path):
    """A real worker process consuming a queue of its own on the real Redis broker."""
    from apps.celery import app
    from apps.core.tasks import ping

    queue = f"test-{uuid.uuid4().hex[:10]}"
    log_path = tmp_path / "worker.log"
    process = start_celery_worker(queue=queue, log_path=log_path)
    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    handle = WorkerHandle(process, queue, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"Celery worker exited early:\n{handle.log()}")
            try:
                ping.apply_async(kwargs={"echo": "ready"}, queue=queue).get(timeout=5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(f"Celery worker never became ready:\n{handle.log()}")
        yield handle
    finally:
        app.conf.task_default_queue = previous_queue
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
