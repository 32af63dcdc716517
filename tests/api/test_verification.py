"""Email addresses are proven before they grant anything, and registration tells nobody which addresses
have accounts. Real SMTP (aiosmtpd, the session's mailbox); the attacker never reads the victim's mail."""

from __future__ import annotations

import uuid

from tests.support.api import PASSWORD, Client, ServerFactory


def _address(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}@corp.test"


async def test_registration_answers_the_same_whether_or_not_the_address_exists(make_api: ServerFactory) -> None:
    server = await make_api()
    owner = server.client
    assert owner.inbox is not None
    address = _address("owner")
    mine = await owner.register_and_login(address)

    prober = Client(owner.base, owner.session)
    taken = await prober.post("/api/v1/auth/register",
                              {"email": address, "password": "another password 1", "display_name": "Probe"})
    fresh = await prober.post("/api/v1/auth/register",
                              {"email": _address("fresh"), "password": "another password 1", "display_name": "Probe"})
    assert taken.status == fresh.status == 202 and taken.body == fresh.body == {"status": "check_email"}

    # The owner is told, with a way in; the account is unchanged.
    told = owner.inbox.latest(address)
    assert told is not None and told["Subject"] == "You already have a Veza account"
    assert not owner.inbox.is_confirmation(address)
    assert (await prober.post("/api/v1/auth/login", {"email": address, "password": "another password 1"})).status == 401
    again = await owner.post("/api/v1/auth/login", {"email": address, "password": PASSWORD})
    assert again.status == 200 and again.body["user_id"] == mine["user_id"]


async def test_a_registration_is_confirmed_only_with_its_password(make_api: ServerFactory) -> None:
    server = await make_api()
    client = server.client
    assert client.inbox is not None
    address = _address("new")
    made = await client.post("/api/v1/auth/register", {"email": address, "password": PASSWORD, "display_name": "N"})
    assert made.status == 202
    link = await client.inbox.link_for(address)
    assert client.inbox.is_confirmation(address)
    mail = client.inbox.latest(address)
    assert mail is not None
    body = client.inbox.text(mail)
    assert f"https://veza.test/login/magic#token={link}" in body and "?token=" not in body

    # Whoever opens the link without the password (someone who did not register) confirms nothing.
    for password in (None, "not the password"):
        refused = await client.post("/api/v1/auth/magic-link/verify", {"token": link, "password": password})
        assert refused.status == 401 and refused.body["error"]["code"] == "invalid_credentials"
    confirmed = await client.post("/api/v1/auth/magic-link/verify", {"token": link, "password": PASSWORD})
    assert confirmed.status == 200
    me = await client.as_user(confirmed.body["access_token"]).get("/api/v1/me")
    assert me.body["email_verified"] is True
    assert (await client.post("/api/v1/auth/login", {"email": address, "password": PASSWORD})).status == 200
    assert (await client.post("/api/v1/auth/magic-link/verify", {"token": link, "password": PASSWORD})).status == 401


async def test_a_squatted_bootstrap_admin_address_grants_nothing_until_its_owner_proves_it(
        make_api: ServerFactory) -> None:
    """An attacker registers the bootstrap admin's address first; the real admin later logs in by a magic link."""
    boss = _address("admin")
    server = await make_api(bootstrap_admin_email=boss)
    attacker = Client(server.client.base, server.client.session)  # no access to the admin's mailbox
    squat = await attacker.register_and_login(boss)
    squatter = attacker.as_user(squat["access_token"])
    profile = await squatter.get("/api/v1/me")
    assert profile.body["roles"] == [] and profile.body["email_verified"] is False
    assert (await squatter.get("/api/v1/admin/users")).status == 403

    owner = server.client
    assert owner.inbox is not None
    assert (await owner.post("/api/v1/auth/magic-link", {"email": boss})).status == 202
    real = await owner.post("/api/v1/auth/magic-link/verify", {"token": await owner.inbox.link_for(boss)})
    assert real.status == 200 and real.body["user_id"] == squat["user_id"]
    admin = owner.as_user(real.body["access_token"])
    assert (await admin.get("/api/v1/me")).body["roles"] == ["admin"]
    assert (await admin.get("/api/v1/admin/users")).status == 200

    # The squatter's password and sessions are gone.
    assert (await attacker.post("/api/v1/auth/login", {"email": boss, "password": PASSWORD})).status == 401
    revoked = await squatter.get("/api/v1/me")
    assert revoked.status == 401 and revoked.body["error"]["code"] == "token_revoked"
    assert (await attacker.post("/api/v1/auth/refresh", {"refresh_token": squat["refresh_token"]})).status == 401


async def test_a_magic_link_login_takes_a_pre_registered_account_back(make_api: ServerFactory) -> None:
    victim_address = _address("victim")
    server = await make_api()
    attacker = Client(server.client.base, server.client.session)
    squat = await attacker.register_and_login(victim_address)

    victim = server.client
    assert victim.inbox is not None
    assert (await victim.post("/api/v1/auth/magic-link", {"email": victim_address})).status == 202
    login = await victim.post("/api/v1/auth/magic-link/verify", {"token": await victim.inbox.link_for(victim_address)})
    assert login.status == 200
    assert (await victim.as_user(login.body["access_token"]).get("/api/v1/me")).body["email_verified"] is True
    assert (await attacker.post("/api/v1/auth/login", {"email": victim_address, "password": PASSWORD})).status == 401
    assert (await attacker.as_user(squat["access_token"]).get("/api/v1/me")).status == 401
