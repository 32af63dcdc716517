"""Registration with a password, answered the same way whether or not the address has an account.

A new address gets an unverified account and a link to confirm it (redeemed with the password,
`magic_links`); an address that has an account gets a mail telling its owner, with a login link, and
the account is left as it was. Either way the caller learns only "check your email", after the same
work (a password hash and a mail), so registration tells nobody which addresses have accounts.

What an unverified account may do (docs/api.md): log in with its password and act as a user without
roles; it never receives the bootstrap admin role, and the first verified login to it (a magic link,
OIDC with `email_verified`) clears its password and ends its sessions.
"""

from __future__ import annotations

import logging

from ..context import Api
from . import audit
from .accounts import limit_attempts
from .magic_links import mail, minutes, new_link
from .users import create_user, normalise_email

log = logging.getLogger("veza.api")


async def register(ctx: Api, *, email: str, password: str, display_name: str, ip: str) -> None:
    email = normalise_email(email)
    await limit_attempts(ctx, "register", email, ip)
    password_hash = await ctx.passwords.hash(password)  # for a taken address too: the same time either way
    user = await create_user(ctx.pool, email=email, display_name=display_name.strip() or display_name,
                             password_hash=password_hash, verified=False)
    if user is not None:
        await audit.record(ctx.pool, "user.registered", actor=str(user["id"]), subject=str(user["id"]), ip=ip)
    if not ctx.mailer.configured:
        log.warning("registration without mail: the address stays unverified", extra={"ip": ip})
        return
    if user is not None:
        link = await new_link(ctx, email, "verify")
        await mail(ctx, email, "Confirm your Veza account",
                   f"Open this link and enter the password you chose to confirm this address (valid {minutes(ctx)}"
                   f" minutes, once):\n\n{link}\n\nIf you did not create a Veza account, ignore this message:"
                   " nobody can use this address on Veza with admin rights until it is confirmed, and logging in"
                   " with a login link from the Veza page removes any password someone else set.\n")
    else:
        link = await new_link(ctx, email, "login")
        await mail(ctx, email, "You already have a Veza account",
                   "Someone (perhaps you) tried to create a Veza account with this address, which already has"
                   f" one. Nothing was changed. To log in, open this link (valid {minutes(ctx)} minutes, once):\n\n"
                   f"{link}\n\nIf it was not you, ignore this message.\n")
        await audit.record(ctx.pool, "user.register_existing", subject=email, ip=ip)
