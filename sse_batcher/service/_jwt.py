"""Signed tokens (JWT) as credentials: one verifier, the grant is in the claims.

``serve --jwt-secret S`` verifies HMAC tokens (HS256/384/512); ``--jwt-public-key
FILE`` verifies tokens signed with the matching private key: RSA keys accept
RS256/384/512 and PS256/384/512, an EC key the one ES algorithm of its curve, an
Ed25519 key EdDSA. Nothing else is ever accepted: not ``none``, and not an HMAC
algorithm keyed with the public key (the classic algorithm-confusion attack),
because the list of algorithms comes from the configured key, never from the token.

The claims a token carries::

    {"sub": "user-42",                       who (logged, counted; optional)
     "exp": 1767225600,                      required; enforced with the leeway
     "aud": "...", "iss": "...",             required when configured
     "sse_batcher": {"subscribe": ["user.42", "user.42.*"],
                     "publish": [],
                     "admin": false}}

A string that is not shaped like a JWT is left to the other verifiers (static
tokens); one that is shaped like a JWT and fails a check is refused with 401.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt

from sse_batcher._exceptions import ConfigError, InvalidCredential, InvalidEvent
from sse_batcher.service._auth import ALL, Grant
from sse_batcher.service._channels import MAX_CHANNEL_PATTERNS, check_pattern

__all__ = ["CLAIM", "MAX_LEEWAY", "JWTVerifier"]

CLAIM = "sse_batcher"
MAX_LEEWAY = 30.0
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def _public_key_algorithms(pem: bytes) -> tuple[Any, tuple[str, ...]]:
    """The loaded key and the algorithms its kind allows."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:  # pragma: no cover - the [jwt] extra installs it
        raise ConfigError(
            "a JWT public key needs the cryptography package: pip install 'sse_batcher[jwt]'"
        ) from None
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigError(f"the JWT public key is not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHM.get(key.curve.name)
        if algorithm is None:
            raise ConfigError(f"unsupported EC curve {key.curve.name} (P-256, P-384, P-521)")
        return key, (algorithm,)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, ("EdDSA",)
    raise ConfigError(f"unsupported JWT public key type {type(key).__name__}")


def _patterns(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise InvalidCredential(f"claim {CLAIM}.{name} must be a list of channel patterns")
    if len(value) > MAX_CHANNEL_PATTERNS:
        raise InvalidCredential(f"claim {CLAIM}.{name} names more than {MAX_CHANNEL_PATTERNS}")
    try:
        return tuple(check_pattern(p) for p in value)
    except InvalidEvent as exc:
        raise InvalidCredential(f"claim {CLAIM}.{name}: {exc}") from None


class JWTVerifier:
    """Verifies JWTs and reads their grant from the ``sse_batcher`` claim.

    Args:
        secret: the HMAC key (at least 32 bytes), for HS256/384/512 tokens.
        public_key: a PEM public key (bytes, text, or a file path) for RSA, EC or
            Ed25519 signed tokens. Exactly one of ``secret`` and ``public_key``.
        audience: when set, tokens must carry this ``aud``.
        issuer: when set, tokens must carry this ``iss``.
        leeway: seconds of clock skew allowed on ``exp``/``nbf``/``iat`` (0 to 30).
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: str | bytes | Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 10.0,
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ConfigError("give exactly one of a JWT secret and a JWT public key")
        if not (isinstance(leeway, int | float) and 0 <= leeway <= MAX_LEEWAY):
            raise ConfigError(f"leeway must be between 0 and {MAX_LEEWAY:g} seconds")
        self._key: Any
        self.algorithms: Sequence[str]
        if secret is not None:
            key = secret.encode() if isinstance(secret, str) else secret
            if len(key) < MIN_SECRET_BYTES:
                raise ConfigError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes")
            self._key, self.algorithms = key, HMAC_ALGORITHMS
        else:
            assert public_key is not None
            if isinstance(public_key, Path):
                pem = public_key.read_bytes()
            elif isinstance(public_key, str):
                pem = public_key.encode()
            else:
                pem = public_key
            self._key, self.algorithms = _public_key_algorithms(pem)
        self.audience = audience
        self.issuer = issuer
        self.leeway = float(leeway)
        self._required = ["exp", *(["aud"] if audience else []), *(["iss"] if issuer else [])]

    def __bool__(self) -> bool:
        return True

    def can_grant(self) -> Grant:
        """Anything: a token may carry any claim, so it protects every capability."""
        return Grant(ALL, ALL, admin=True)

    def verify(self, credential: str) -> Grant | None:
        """The grant of a valid token; None when ``credential`` is not a JWT at all.

        Raises:
            InvalidCredential: a JWT that fails a check (signature, algorithm,
                expiry, audience, issuer, or the ``sse_batcher`` claim's shape).
        """
        if credential.count(".") != 2:
            return None  # a static token, not ours to judge
        try:
            claims = jwt.decode(
                credential,
                self._key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidCredential("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidCredential(f"invalid token: {exc}") from None
        grant = claims.get(CLAIM)
        if not isinstance(grant, dict):
            raise InvalidCredential(f"the token has no {CLAIM} claim object")
        admin = grant.get("admin", False)
        if not isinstance(admin, bool):
            raise InvalidCredential(f"claim {CLAIM}.admin must be true or false")
        exp = claims["exp"]
        if not isinstance(exp, int | float) or not math.isfinite(exp):
            raise InvalidCredential("exp must be a number")
        subject = claims.get("sub")
        return Grant(
            subscribe=_patterns(grant, "subscribe"),
            publish=_patterns(grant, "publish"),
            admin=admin,
            identity=subject if isinstance(subject, str) and subject else "jwt",
            # Valid until exp plus the clock skew allowed: a stream ends then.
            expires=float(exp) + self.leeway,
        )
