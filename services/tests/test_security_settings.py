"""The settings of issue 10: attempt limits and the e-mail domains each IdP may vouch for."""

from __future__ import annotations

import pytest

from apex.common.config import ConfigError, RateLimit, Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.mfa_lockout == RateLimit(count=10, window=3600)
    assert settings.mfa_token_attempts == 5
    assert settings.mfa_sms_per_token == 3
    assert settings.mfa_sms_per_user == RateLimit(count=10, window=3600)
    assert settings.mfa_sms_code_ttl == 300
    assert settings.password_forgot_per_email == RateLimit(count=3, window=3600)
    assert settings.password_forgot_per_ip == RateLimit(count=30, window=3600)
    assert settings.idp_trusted_domains == frozenset()
    assert settings.saml_trusted_domains == frozenset()


def test_values() -> None:
    settings = Settings.from_env(
        {
            "APEX_MFA_LOCKOUT": "6/600",
            "APEX_MFA_TOKEN_ATTEMPTS": "3",
            "APEX_MFA_SMS_PER_TOKEN": "2",
            "APEX_MFA_SMS_PER_USER": "4/60",
            "APEX_MFA_SMS_CODE_TTL": "30",
            "APEX_PASSWORD_FORGOT_PER_EMAIL": "1/60",
            "APEX_PASSWORD_FORGOT_PER_IP": "9/60",
            "APEX_IDP_TRUSTED_DOMAINS": " Example.com, corp.example.org ,",
            "APEX_SAML_TRUSTED_DOMAINS": "example.com",
        }
    )
    assert settings.mfa_lockout == RateLimit(count=6, window=600)
    assert (settings.mfa_token_attempts, settings.mfa_sms_per_token) == (3, 2)
    assert settings.mfa_sms_per_user == RateLimit(count=4, window=60)
    assert settings.mfa_sms_code_ttl == 30
    assert settings.password_forgot_per_email == RateLimit(count=1, window=60)
    assert settings.password_forgot_per_ip == RateLimit(count=9, window=60)
    assert settings.idp_trusted_domains == {"example.com", "corp.example.org"}
    assert settings.saml_trusted_domains == {"example.com"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APEX_MFA_LOCKOUT", "6"),
        ("APEX_MFA_LOCKOUT", "0/600"),
        ("APEX_MFA_SMS_PER_USER", "x/60"),
        ("APEX_PASSWORD_FORGOT_PER_IP", "5/0"),
        ("APEX_MFA_TOKEN_ATTEMPTS", "0"),
        ("APEX_MFA_SMS_PER_TOKEN", "three"),
        ("APEX_MFA_SMS_CODE_TTL", "0"),
        ("APEX_MFA_SMS_CODE_TTL", "0.0005"),  # under a millisecond: Redis cannot keep it
        ("APEX_MFA_LOCKOUT", "6/0.0005"),
        ("APEX_IDP_TRUSTED_DOMAINS", "*.example.com"),
        ("APEX_SAML_TRUSTED_DOMAINS", "user@example.com"),
        ("APEX_IDP_TRUSTED_DOMAINS", "localhost"),
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})
