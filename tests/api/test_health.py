from flask.testing import FlaskClient


def test_healthz_answers_without_a_key(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_checks_database_and_keyring(client: FlaskClient) -> None:
    assert client.get("/readyz").get_json() == {"status": "ready"}
