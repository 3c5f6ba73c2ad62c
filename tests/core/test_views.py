import pytest
from django.urls import reverse

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_healthz_checks_database_and_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    assert response.json()["status"] == "ok"


def test_pages_need_login(client):
    response = client.get(reverse("home"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_renders(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"Log in to flopwatch" in response.content


@pytest.mark.parametrize(
    ("name", "sees", "hidden"),
    [
        ("admin", ["Team A", "Team B"], []),
        ("finance", ["Team A", "Team B"], []),
        ("member", ["Team A"], ["Team B"]),
        ("outsider", ["Team B"], ["Team A"]),
        ("nobody", ["not in any team"], ["Team A", "Team B"]),
    ],
)
def test_each_role_lands_on_a_home_page_with_what_it_may_see(client, personas, name, sees, hidden):
    assert client.login(username=name, password=PASSWORD)
    response = client.get(reverse("home"))
    assert response.status_code == 200
    body = response.content.decode()
    for text in sees:
        assert text in body
    for text in hidden:
        assert text not in body
