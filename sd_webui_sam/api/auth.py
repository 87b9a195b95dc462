"""HTTP basic auth for our routes, with the WebUI's ``--api-auth`` credentials.

A1111 applies ``--api-auth`` only to its own ``/sdapi`` routes; we apply the same credentials
to ours so that a server protected for the API is protected for segmentation too.
"""
from __future__ import annotations

import secrets
from typing import Callable, Mapping, Optional, Union

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

Credentials = Union[None, str, Mapping[str, str]]


def parse_credentials(auth: Credentials) -> dict:
    """``"user:pass,user2:pass2"`` (the --api-auth format) or a mapping -> {user: password}."""
    if not auth:
        return {}
    if isinstance(auth, Mapping):
        return {str(user): str(password) for user, password in auth.items()}
    pairs = {}
    for item in str(auth).split(","):
        item = item.strip()
        if not item:
            continue
        user, separator, password = item.partition(":")
        if not separator:
            raise ValueError("API credentials must look like 'user:password[,user2:password2]'.")
        pairs[user] = password
    return pairs


def make_auth_dependency(auth: Credentials) -> Optional[Callable]:
    """A FastAPI dependency that checks basic auth, or None when no credentials are set."""
    users = parse_credentials(auth)
    if not users:
        return None
    basic = HTTPBasic(auto_error=False)

    def require_credentials(credentials: Optional[HTTPBasicCredentials] = Depends(basic)) -> None:
        if credentials is not None:
            expected = users.get(credentials.username)
            # compare_digest on both paths so that timing does not reveal which user names exist
            supplied = credentials.password.encode("utf-8")
            if expected is not None and secrets.compare_digest(supplied, expected.encode("utf-8")):
                return
            secrets.compare_digest(supplied, b"")
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return require_credentials
