"""registry/recipients.yaml: validated like the other documents, covered by the policy hash, and
each recipient's webhook secret required before the gateway may start."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.delivery import RecipientSecretError, ensure_secret_file, recipient_secrets
from gateway.policy.documents import load_policy_set
from gateway.policy.model import Recipient
from tests.conftest import DEMO_WEBHOOK_SECRET
from tests.policy.test_documents import Documents, check, problems_of, replace_in

DEMO_URL = "url: http://127.0.0.1:8025/webhooks/consent"


def test_the_demo_registry_has_one_recipient(documents: Documents) -> None:
    found = load_policy_set(*documents)

    assert found.recipients == {
        "mail_service": Recipient(
            id="mail_service",
            name="Newsletter mail service (local relay)",
            purposes=("email_marketing",),
            url="http://127.0.0.1:8025/webhooks/consent",
            secret_env="DEMO_MAIL_WEBHOOK_SECRET",
        )
    }


def test_the_policy_hash_covers_the_recipients(documents: Documents) -> None:
    before = load_policy_set(*documents).hash
    replace_in(documents[1] / "recipients.yaml", "[email_marketing]", "[recommendations]")

    assert load_policy_set(*documents).hash != before


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (DEMO_URL, "url: http://mail.example.com/hook", "url", "plain http is allowed on loopback"),
        (DEMO_URL, "url: ftp://127.0.0.1/hook", "url", "Must be an https URL"),
        (DEMO_URL, "url: https://", "url", "Must be an https URL"),
        ("[email_marketing]", "[newsletters]", "purposes", "unknown purpose 'newsletters'"),
        ("DEMO_MAIL_WEBHOOK_SECRET", "not a name", "secret_env", "environment variable name"),
        ("    secret_env: DEMO_MAIL_WEBHOOK_SECRET\n", "", "secret_env", "Missing data"),
    ],
    ids=["http-remote", "ftp", "no-host", "unknown-purpose", "bad-variable", "no-secret-env"],
)
def test_an_invalid_recipient_names_file_and_key(
    documents: Documents, old: str, new: str, key: str, message: str
) -> None:
    replace_in(documents[1] / "recipients.yaml", old, new)

    [problem] = problems_of(documents)

    path, where, text = problem.split(": ", 2)
    assert Path(path).name == "recipients.yaml"
    assert where == f"recipients.mail_service.{key}"
    assert message in text


@pytest.mark.parametrize("url", ["https://crm.example.com/hooks", "http://[::1]:9000/h"])
def test_https_anywhere_and_http_on_loopback_are_accepted(documents: Documents, url: str) -> None:
    replace_in(documents[1] / "recipients.yaml", DEMO_URL, f"url: {url}")

    assert load_policy_set(*documents).recipients["mail_service"].url == url


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "DEMO_MAIL_WEBHOOK_SECRET is not set"),
        ("plain-text-secret", "is not a whsec_ secret"),
        ("whsec_not*base64", "is not a whsec_ secret"),
        ("whsec_c2hvcnQ=", "is not a whsec_ secret"),
    ],
    ids=["unset", "no-prefix", "not-base64", "too-short"],
)
def test_a_missing_or_malformed_secret_is_an_error_naming_the_recipient(
    documents: Documents,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
    problem: str,
) -> None:
    if value is None:
        monkeypatch.delenv("DEMO_MAIL_WEBHOOK_SECRET")
    else:
        monkeypatch.setenv("DEMO_MAIL_WEBHOOK_SECRET", value)

    with pytest.raises(RecipientSecretError) as caught:
        recipient_secrets(load_policy_set(*documents), tmp_path)

    assert "recipients.mail_service" in str(caught.value) and problem in str(caught.value)


def test_a_secret_is_read_from_the_instance_folder_where_the_variable_is_unset(
    documents: Documents, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEMO_MAIL_WEBHOOK_SECRET")
    path = ensure_secret_file(tmp_path, "DEMO_MAIL_WEBHOOK_SECRET")

    found = recipient_secrets(load_policy_set(*documents), tmp_path)

    assert found == {"mail_service": path.read_text().strip()}
    assert path.stat().st_mode & 0o077 == 0
    assert ensure_secret_file(tmp_path, "DEMO_MAIL_WEBHOOK_SECRET").read_text() == (
        f"{found['mail_service']}\n"
    )


def test_the_variable_wins_over_the_file(
    documents: Documents, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_secret_file(tmp_path, "DEMO_MAIL_WEBHOOK_SECRET")

    found = recipient_secrets(load_policy_set(*documents), tmp_path)

    assert found == {"mail_service": DEMO_WEBHOOK_SECRET}


def test_policy_check_lists_the_recipients(
    documents: Documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = check(documents, monkeypatch)

    assert code == 0, err
    assert "3 databases, 1 recipients" in out
    assert "recipient mail_service: http://127.0.0.1:8025/webhooks/consent" in out
    assert "DEMO_MAIL_WEBHOOK_SECRET" not in err


def test_policy_check_warns_of_a_missing_secret(
    documents: Documents, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DEMO_MAIL_WEBHOOK_SECRET")
    monkeypatch.setenv("GATEWAY_HOME", str(tmp_path))

    code, _, err = check(documents, monkeypatch)

    assert code == 0
    assert "recipients.mail_service: DEMO_MAIL_WEBHOOK_SECRET is not set" in err
