"""The README's quick start, runnable: python examples/quickstart.py

Uses a throw-away SQLite file and fresh keys, so it touches nothing of yours.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from fundaments import Security, initialize_fundaments
from fundaments.config import generate_keys, load_settings


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_keys()
        settings = load_settings(
            env_file=Path(tmp) / "none.env",
            database_url=f"sqlite:///{Path(tmp) / 'quickstart.db'}",
            master_encryption_key=keys["MASTER_ENCRYPTION_KEY"],
            persistent_encryption_salt=keys["PERSISTENT_ENCRYPTION_SALT"],
            log_level="WARNING",
        )
        async with await initialize_fundaments(settings) as fundaments:
            security: Security = fundaments["security"]
            request_data = {"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0 (quickstart)"}

            password = "correct horse battery staple"
            user = await security.register_user("dev@example.com", password, roles=["member"])
            print("registered:", user.username, "id", user.id)

            result = await security.user_login("dev@example.com", password, request_data)
            print("login ok:", bool(result))
            assert result.session is not None and result.session.token is not None
            token = result.session.token

            session = await security.validate_session(token, request_data)
            print("session valid from the same client:", session is not None)
            stolen = await security.validate_session(token, {**request_data, "ip_address": "198.51.100.9"})
            print("same cookie from another IP:", stolen)
            after = await security.validate_session(token, request_data)
            print("after the hijack attempt the session is dead:", after is None)

            wrong = await security.user_login("dev@example.com", "wrong password guess", request_data)
            print("wrong password:", bool(wrong), wrong.reason)

            await security.create_role("editor", permissions=["articles:write", "articles:read"])
            await security.grant_role(user.id, "editor")
            print("can write articles:", await security.check_permission(user.id, "articles:write"))
            print("can manage users:", await security.check_permission(user.id, "can_manage_users"))

            secret = security.encrypt_data("SensitiveToken123", context=f"user:{user.id}:api_key")
            print("encrypted:", secret[:24] + "…")
            print("decrypted:", security.decrypt_data(secret, context=f"user:{user.id}:api_key"))

            print("audit chain intact:", bool(await security.verify_audit_chain()))
            for event in reversed(await security.audit_events(user_id=user.id, limit=5)):
                print(f"  audit: {event.kind:<26} {event.outcome}")


if __name__ == "__main__":
    asyncio.run(main())
