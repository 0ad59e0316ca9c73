"""Who may use the HTTP transport: the Host/Origin guard, bearer-token authentication and
the refusal to serve an open port.

Every check is FastMCP's own: its HostOriginGuardMiddleware in strict mode (a foreign
Host gets 421, a foreign Origin 403: no DNS rebinding from a web page) and its token
verifiers (StaticTokenVerifier for MCP_AUTH_TOKENS, JWTVerifier against a JWKS URL). Here
we only read the settings, decide, and hand FastMCP its arguments. `GET /health` is
host-checked like everything else but needs no token: probes and balancers reach it on an
allowed Host (loopback, the address the request came in on, MCP_ALLOWED_HOSTS).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    SettingsConfigDict,
)

from codebase_mcp.config import GivenValuesOnly
from codebase_mcp.errors import ConfigError

if TYPE_CHECKING:
    from fastmcp import FastMCP
    from fastmcp.server.auth import AuthProvider
    from starlette.applications import Starlette

# A shorter shared secret is guessable; `openssl rand -hex 32` gives 64 characters.
MIN_TOKEN_LENGTH = 16
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


def _split_list(value: Any) -> Any:
    """`a, b,,c` -> ["a", "b", "c"]; commas or whitespace separate (a secret file may end
    with a newline)."""
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    return value


class HttpSecuritySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True, frozen=True
    )

    # Host headers accepted besides loopback and the address a request came in on
    # (fnmatch patterns; "*" turns the Host check off, for a proxy that checks it).
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("MCP_ALLOWED_HOSTS", "allowed_hosts"),
    )
    # Browser origins accepted besides loopback pages and the server's own origin.
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("MCP_ALLOWED_ORIGINS", "allowed_origins"),
    )
    auth_tokens: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MCP_AUTH_TOKENS", "auth_tokens"), repr=False
    )
    auth_jwks_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MCP_AUTH_JWKS_URI", "auth_jwks_uri")
    )
    auth_issuer: str | None = Field(
        default=None, validation_alias=AliasChoices("MCP_AUTH_ISSUER", "auth_issuer")
    )
    auth_audience: str | None = Field(
        default=None, validation_alias=AliasChoices("MCP_AUTH_AUDIENCE", "auth_audience")
    )
    auth_algorithm: str = Field(
        default="RS256", validation_alias=AliasChoices("MCP_AUTH_ALGORITHM", "auth_algorithm")
    )
    auth_disabled: bool = Field(
        default=False, validation_alias=AliasChoices("MCP_AUTH_DISABLED", "auth_disabled")
    )
    # Streamable HTTP without server-side sessions: any replica answers any request.
    stateless: bool = Field(
        default=True, validation_alias=AliasChoices("MCP_STATELESS_HTTP", "stateless")
    )

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return value

    @field_validator("auth_tokens")
    @classmethod
    def _check_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        tokens = _split_list(value.get_secret_value())
        for number, token in enumerate(tokens, 1):
            if len(token) < MIN_TOKEN_LENGTH:
                # Says which token and how long, never the token itself.
                raise ValueError(
                    f"token {number} of {len(tokens)} has {len(token)} characters; use at "
                    f"least {MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 32`)"
                )
        return value

    @field_validator("auth_jwks_uri")
    @classmethod
    def _check_jwks_uri(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL of a JSON Web Key Set")
        return value.strip()

    @field_validator("auth_issuer", "auth_audience")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

    @field_validator("auth_algorithm")
    @classmethod
    def _check_algorithm(cls, value: str) -> str:
        if value.strip().upper() not in JWT_ALGORITHMS:
            raise ValueError(f"must be one of {', '.join(JWT_ALGORITHMS)}")
        return value.strip().upper()

    # --- derived ------------------------------------------------------------------------

    @property
    def tokens(self) -> list[str]:
        if self.auth_tokens is None:
            return []
        return list(_split_list(self.auth_tokens.get_secret_value()))

    @property
    def auth_configured(self) -> bool:
        return bool(self.tokens) or self.auth_jwks_uri is not None

    def describe_auth(self) -> str:
        """How requests authenticate, for the start-up log line: never a token."""
        kinds = []
        if self.tokens:
            kinds.append(f"{len(self.tokens)} static bearer token(s)")
        if self.auth_jwks_uri:
            kinds.append(
                f"JWT ({self.auth_algorithm}, issuer {self.auth_issuer}, audience "
                f"{self.auth_audience}, keys from {self.auth_jwks_uri})"
            )
        return " or ".join(kinds) if kinds else "none"


class _ExplicitHttpSecurity(GivenValuesOnly, HttpSecuritySettings):
    """The settings from the given values only."""


def default_http_security() -> HttpSecuritySettings:
    """Every default: the guard on, no token (for loopback), stateless."""
    return _ExplicitHttpSecurity()


def _env_name(field: str) -> str:
    info = HttpSecuritySettings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return field.upper()


def load_http_security(env: Mapping[str, str] | None = None) -> HttpSecuritySettings:
    """The settings from the process environment (or `env`), checked as a whole.

    Raises ConfigError naming every bad setting; no message contains a token."""
    try:
        if env is None:
            settings = HttpSecuritySettings()
        else:
            wanted = {_env_name(name).lower(): name for name in HttpSecuritySettings.model_fields}
            values: dict[str, Any] = {
                wanted[k.lower()]: v for k, v in env.items() if k.lower() in wanted
            }
            settings = _ExplicitHttpSecurity(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            name = _env_name(str((error.get("loc") or ("?",))[0]))
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{name}: {message}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    problems = auth_problems(settings)
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return settings


def auth_problems(settings: HttpSecuritySettings) -> list[str]:
    """Combinations that do not make sense on their own (pure)."""
    problems = []
    if settings.auth_jwks_uri:
        # Without both, a token the identity provider issued for any other application
        # (or by any other issuer serving the same keys) would be accepted here.
        if not settings.auth_issuer:
            problems.append("MCP_AUTH_ISSUER: is required with MCP_AUTH_JWKS_URI")
        if not settings.auth_audience:
            problems.append("MCP_AUTH_AUDIENCE: is required with MCP_AUTH_JWKS_URI")
    else:
        for name, value in (
            ("MCP_AUTH_ISSUER", settings.auth_issuer),
            ("MCP_AUTH_AUDIENCE", settings.auth_audience),
        ):
            if value:
                problems.append(f"{name}: has no effect without MCP_AUTH_JWKS_URI")
    if settings.auth_disabled and settings.auth_configured:
        problems.append(
            "MCP_AUTH_DISABLED: is true while MCP_AUTH_TOKENS or MCP_AUTH_JWKS_URI is set; "
            "say one or the other"
        )
    return problems


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name may resolve to anything


def check_exposure(host: str, settings: HttpSecuritySettings) -> None:
    """Refuse to serve anyone who can reach a non-loopback port without a token, unless
    MCP_AUTH_DISABLED=true says that is meant (e.g. a gateway authenticates)."""
    if is_loopback(host) or settings.auth_configured or settings.auth_disabled:
        return
    raise ConfigError(
        f"MCP_HOST: the http transport on {host} (not a loopback address) needs "
        "authentication: set MCP_AUTH_TOKENS (comma-separated bearer tokens) or "
        "MCP_AUTH_JWKS_URI with MCP_AUTH_ISSUER and MCP_AUTH_AUDIENCE; or set "
        "MCP_AUTH_DISABLED=true when something in front of the server authenticates"
    )


def allowed_hosts(bind_host: str, settings: HttpSecuritySettings) -> list[str]:
    """Host headers to accept besides FastMCP's own (127.0.0.1, localhost, ::1 and the
    address each request came in on): MCP_ALLOWED_HOSTS, and the bind address when it
    is a name (a name is not what a connection's address shows)."""
    hosts = list(settings.allowed_hosts)
    name = bind_host.strip().strip("[]")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if name and name not in hosts:
            hosts.append(name)
    return hosts


def build_auth(settings: HttpSecuritySettings) -> AuthProvider | None:
    """FastMCP's verifiers for the configured methods; both may be set (either passes)."""
    from fastmcp.server.auth import MultiAuth, TokenVerifier
    from fastmcp.server.auth.providers.jwt import JWTVerifier, StaticTokenVerifier

    verifiers: dict[str, TokenVerifier] = {}
    if settings.tokens:
        # The client id names the token by its position, so logs never carry it.
        verifiers["static-tokens"] = StaticTokenVerifier(
            {t: {"client_id": f"token-{i}", "scopes": []} for i, t in enumerate(settings.tokens, 1)}
        )
    if settings.auth_jwks_uri:
        verifiers["jwt"] = JWTVerifier(
            jwks_uri=settings.auth_jwks_uri,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            algorithm=settings.auth_algorithm,
        )
    if not verifiers:
        return None
    if len(verifiers) == 1:
        return next(iter(verifiers.values()))
    return MultiAuth(verifiers=verifiers)


def build_http_app(
    server: FastMCP[Any], *, path: str, bind_host: str, settings: HttpSecuritySettings
) -> Starlette:
    """The streamable-HTTP app with the guard, the auth and the session mode."""
    server.auth = build_auth(settings)
    return server.http_app(
        path=path,
        transport="http",
        stateless_http=settings.stateless,
        # True is FastMCP's strict mode: every request's Host (and Origin, when sent) is
        # checked, whatever address the server is bound to.
        host_origin_protection=True,
        allowed_hosts=allowed_hosts(bind_host, settings),
        allowed_origins=settings.allowed_origins or None,
    )
