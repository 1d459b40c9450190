"""OpenAPI 3.0/3.1 operations as tools.

Each operation becomes one `Tool`: its arguments are one JSON Schema object holding the
path, query, header and cookie parameters by name and the request body as `body`; component
schemas, local or in other documents, are carried in `$defs`, so a recursive schema stays a
finite reference instead of an endless inlining. The call is a real HTTP request with the
configured credentials, an `Idempotency-Key` on every unsafe method, and the answer (or the
failure, as a `ToolError` saying whether a retry may help) given back as JSON.

Risk follows the method (GET/HEAD/OPTIONS read, POST/PUT/PATCH write, DELETE irreversible) unless
the operator's mapping or the operation's `x-aiassist-risk` says otherwise; scopes come from
a mapping or `x-aiassist-scopes`. Import happens once, at start-up: a broken document fails
there, naming the operation, not in the middle of a run.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import httpx
import jsonschema
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from aiassist.agent.sources.auth import Auth
from aiassist.agent.sources.validation import schema_validator
from aiassist.agent.tools import RateLimit, Risk, Tool, ToolContext, ToolError, ToolSet

if TYPE_CHECKING:
    from referencing._core import Resolver

__all__ = ["OpenAPIError", "OpenAPISource", "Operation"]

logger = logging.getLogger(__name__)

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
_SAFE_METHODS = frozenset({"get", "head", "options"})
_DEFAULT_RISK = {
    "get": Risk.READ,
    "head": Risk.READ,
    "options": Risk.READ,
    "delete": Risk.IRREVERSIBLE,
}
_IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})
_RETRYABLE_STATUS = frozenset({408, 425, 429})
_JSON_MEDIA = re.compile(r"^application/([\w.+-]+\+)?json$")
_FORM_MEDIA = "application/x-www-form-urlencoded"
# Keywords that only document (or are huge) and that a model or a validator does not need.
_DROPPED = frozenset({"xml", "externalDocs", "example", "examples", "discriminator", "nullable"})
# Keywords whose value is data, not a schema: copied as is, never searched for `$ref`.
_DATA = frozenset({"enum", "const", "default"})
# Keywords whose value maps names (which may be anything, even "$ref") to schemas.
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
_MAX_REF_HOPS = 32
_MAX_DESCRIPTION = 2000
_ROOT_URI = "aiassist:openapi"


class OpenAPIError(ValueError):
    """The document cannot be imported as given; the message names where and why."""


# --- documents and references --------------------------------------------------------------
class _Documents:
    """Fetches and parses documents by URI, once each; local files only from local roots."""

    def __init__(self, timeout: float, allow_files: bool) -> None:
        self._timeout = timeout
        self._allow_files = allow_files
        self._cache: dict[str, Any] = {}

    def load(self, uri: str) -> Any:
        if uri not in self._cache:
            self._cache[uri] = _parse(self._read(uri), uri)
        return self._cache[uri]

    def retrieve(self, uri: str) -> Any:
        """`referencing`'s hook: a document becomes a resource that pointers can walk."""
        return DRAFT202012.create_resource(self.load(uri))

    def _read(self, uri: str) -> bytes:
        scheme = urlsplit(uri).scheme
        if scheme in ("http", "https"):
            try:
                response = httpx.get(uri, timeout=self._timeout, follow_redirects=True)
            except httpx.HTTPError as exc:
                raise OpenAPIError(f"cannot fetch {uri}: {type(exc).__name__}") from None
            if response.status_code != 200:
                raise OpenAPIError(f"cannot fetch {uri}: HTTP {response.status_code}")
            data = response.content
        elif scheme == "file":
            if not self._allow_files:
                raise OpenAPIError(f"a document fetched over HTTP may not reference a file: {uri}")
            try:
                data = Path(url2pathname(urlsplit(uri).path)).read_bytes()
            except OSError as exc:
                raise OpenAPIError(f"cannot read {uri}: {exc.strerror}") from None
        elif not scheme:
            raise OpenAPIError(
                f"cannot resolve the relative reference {uri!r}: "
                "give base_uri= when the document is passed as a mapping"
            )
        else:
            raise OpenAPIError(f"unsupported reference scheme {scheme!r} in {uri}")
        if len(data) > _MAX_DOCUMENT_BYTES:
            raise OpenAPIError(f"{uri} is larger than {_MAX_DOCUMENT_BYTES} bytes")
        return data


def _parse(data: bytes, uri: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml comes with the agent extra
        raise OpenAPIError(f"{uri} is not JSON, and reading YAML needs pyyaml") from None
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise OpenAPIError(f"{uri} is neither JSON nor YAML: {exc}") from None


class _Scope(NamedTuple):
    """Where a node was found: how to resolve its references, and the document it is in."""

    resolver: Resolver[Any]
    base: str


def _absolute(scope: _Scope, ref: str) -> str:
    return scope.base + ref if ref.startswith("#") else urljoin(scope.base, ref)


def _lookup(scope: _Scope, ref: str) -> tuple[Any, _Scope, str]:
    uri = _absolute(scope, ref)
    try:
        resolved = scope.resolver.lookup(ref)
    except Unresolvable as exc:
        cause = exc.__cause__.__cause__ if exc.__cause__ is not None else None
        why = f": {cause}" if isinstance(cause, OpenAPIError) else ""
        raise OpenAPIError(f"cannot resolve $ref {ref!r} (from {scope.base}){why}") from None
    return resolved.contents, _Scope(resolved.resolver, urldefrag(uri).url), uri


def _deref(node: Any, scope: _Scope) -> tuple[Any, _Scope]:
    """A parameter, body or path item that may be a `$ref` (or a chain of them)."""
    for _ in range(_MAX_REF_HOPS):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
            return node, scope
        node, scope, _ = _lookup(scope, node["$ref"])
    raise OpenAPIError(f"a $ref chain longer than {_MAX_REF_HOPS} hops (a cycle?) in {scope.base}")


class _Schemas:
    """Converts OpenAPI schemas to self-contained JSON Schema for one operation.

    Every referenced schema becomes one `$defs` entry, named when first met: a schema that
    refers to itself, directly or not, finds its own name and the walk stops there.
    """

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}
        self._names: dict[str, str] = {}

    def convert(self, node: Any, scope: _Scope) -> Any:
        if isinstance(node, list):
            return [self.convert(item, scope) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                out[key] = self._ref(value, scope)
            elif key in _DROPPED or key.startswith("x-"):
                continue
            elif key in _DATA:
                out[key] = value
            elif key in _NAMED and isinstance(value, dict):
                out[key] = {name: self.convert(sub, scope) for name, sub in value.items()}
            else:
                out[key] = self.convert(value, scope)
        return _from_openapi_30(node, out)

    def _ref(self, ref: str, scope: _Scope) -> str:
        uri = _absolute(scope, ref)
        name = self._names.get(uri)
        if name is None:
            contents, target, uri = _lookup(scope, ref)
            name = self._names[uri] = self._new_name(uri)
            self.defs[name] = True  # a placeholder: a recursive reference finds the name
            self.defs[name] = self.convert(contents, target)
        return f"#/$defs/{name}"

    def _new_name(self, uri: str) -> str:
        document, fragment = urldefrag(uri)
        last = fragment.rsplit("/", 1)[-1] if fragment else Path(urlsplit(document).path).stem
        last = unquote(last).replace("~1", "/").replace("~0", "~")
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", last).strip("_") or "schema"
        name, n = base, 1
        while name in self.defs:
            n += 1
            name = f"{base}_{n}"
        return name


def _from_openapi_30(source: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0's dialect (`nullable`, boolean exclusive bounds) in JSON Schema terms."""
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # `out.pop` runs only for the boolean form, which JSON Schema does not have.
        if isinstance(out.get(bound), bool) and out.pop(bound) and limit in out:
            out[bound] = out.pop(limit)
    if source.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
            if isinstance(out.get("enum"), list) and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif kind is None:
            return {"anyOf": [out, {"type": "null"}]}
    return out


# --- operations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Param:
    """How one argument travels: as which parameter, where, and serialised how."""

    name: str
    key: str
    location: str
    style: str
    explode: bool
    as_json: bool


@dataclass(frozen=True)
class Operation:
    """One imported operation: what the model is shown and how the call is made."""

    name: str
    method: str
    path: str
    base_url: str
    description: str
    parameters: dict[str, Any]
    risk: Risk
    scopes: frozenset[str]
    tags: tuple[str, ...]
    params: tuple[_Param, ...] = field(repr=False)
    body_key: str | None = field(default=None, repr=False)
    body_media: str | None = field(default=None, repr=False)


class OpenAPISource:
    """The operations of one OpenAPI document, as tools that call the API over HTTP.

    `document` is a mapping, a file path or an http(s) URL. Use it as an async context
    manager (or call `aclose`) so its connection pool is closed with it.
    """

    def __init__(
        self,
        document: Mapping[str, Any] | str | Path,
        *,
        base_url: str | None = None,
        base_uri: str | None = None,
        auth: Auth | None = None,
        risk: Mapping[str, Risk | str] | None = None,
        scopes: Mapping[str, Iterable[str]] | None = None,
        prefix: str = "",
        rate_limit: RateLimit | None = None,
        timeout: float = 10.0,
        max_response_bytes: int = 1_000_000,
        client: httpx.AsyncClient | None = None,
        source: str = "openapi",
    ) -> None:
        self.auth = auth
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.rate_limit = rate_limit
        self.source = source
        self._client = client
        self._owns_client = client is None
        root, root_uri, local = self._load(document, base_uri, timeout)
        if not isinstance(root, dict) or not str(root.get("openapi", "")).startswith("3."):
            raise OpenAPIError("not an OpenAPI 3.0 or 3.1 document (no 'openapi: 3.x' field)")
        registry: Registry[Any] = Registry(retrieve=self._documents.retrieve)  # type: ignore[call-arg]
        registry = registry.with_resource(root_uri, DRAFT202012.create_resource(root))
        scope = _Scope(registry.resolver(base_uri=root_uri), root_uri)
        self.title = str(root.get("info", {}).get("title", ""))
        self.skipped: dict[str, str] = {}
        self.operations = self._operations(
            root, scope, local, base_url, prefix, dict(risk or {}), dict(scopes or {})
        )

    # --- building ---------------------------------------------------------------------------
    def _load(
        self, document: Mapping[str, Any] | str | Path, base_uri: str | None, timeout: float
    ) -> tuple[Any, str, bool]:
        if isinstance(document, Mapping):
            self._documents = _Documents(timeout, allow_files=True)
            uri = base_uri or _ROOT_URI
            return dict(document), uri, True
        text = str(document)
        if text.startswith(("http://", "https://")):
            self._documents = _Documents(timeout, allow_files=False)
            return self._documents.load(text), text, False
        self._documents = _Documents(timeout, allow_files=True)
        uri = Path(text).resolve().as_uri()
        return self._documents.load(uri), uri, True

    def _operations(
        self,
        root: dict[str, Any],
        scope: _Scope,
        local: bool,
        base_url: str | None,
        prefix: str,
        risk: dict[str, Risk | str],
        scopes: dict[str, Iterable[str]],
    ) -> tuple[Operation, ...]:
        operations: list[Operation] = []
        names: set[str] = set()
        for path, raw_item in (root.get("paths") or {}).items():
            item, item_scope = _deref(raw_item, scope)
            if not isinstance(item, dict):
                raise OpenAPIError(f"paths[{path!r}] is not an object")
            for method in _METHODS:
                op = item.get(method)
                if not isinstance(op, dict):
                    continue
                where = f"{method.upper()} {path}"
                name = _tool_name(op.get("operationId"), method, path, prefix, names)
                try:
                    document_url = "" if local else scope.base
                    server = base_url or _server_url(op, item, root, document_url)
                    if server is None:
                        raise OpenAPIError("no base URL: pass base_url= or add `servers`")
                    built = self._operation(
                        name, method, path, server, op, item, item_scope, risk, scopes
                    )
                except OpenAPIError as exc:
                    raise OpenAPIError(f"{where} ({name}): {exc}") from None
                except _Skip as skip:
                    self.skipped[name] = f"{where}: {skip}"
                    logger.warning("OpenAPI operation %s skipped: %s", where, skip)
                    continue
                names.add(name)
                operations.append(built)
        unknown = (
            (set(risk) | set(scopes))
            - {o.name for o in operations}
            - {
                op.get("operationId")
                for item in (root.get("paths") or {}).values()
                if isinstance(item, dict)
                for op in item.values()
                if isinstance(op, dict)
            }
        )
        if unknown:
            raise OpenAPIError(f"risk or scopes given for unknown operations: {sorted(unknown)}")
        return tuple(operations)

    def _operation(
        self,
        name: str,
        method: str,
        path: str,
        server: str,
        op: dict[str, Any],
        item: dict[str, Any],
        scope: _Scope,
        risk: dict[str, Risk | str],
        scopes: dict[str, Iterable[str]],
    ) -> Operation:
        schemas = _Schemas()
        properties: dict[str, Any] = {}
        required: list[str] = []
        params: list[_Param] = []
        merged: dict[tuple[str, str], tuple[dict[str, Any], _Scope]] = {}
        for raw in [*item.get("parameters", []), *op.get("parameters", [])]:
            param, param_scope = _deref(raw, scope)
            if not isinstance(param, dict) or "name" not in param or "in" not in param:
                raise OpenAPIError("a parameter without name and in")
            merged[(param["name"], param["in"])] = (param, param_scope)  # operation wins
        taken = {pname for pname, _ in merged}
        for (pname, location), (param, param_scope) in merged.items():
            if location == "header" and pname.lower() in _IGNORED_HEADERS:
                continue
            if location not in ("path", "query", "header", "cookie"):
                raise OpenAPIError(f"parameter {pname!r} is in unknown location {location!r}")
            key = pname if pname not in properties else f"{pname}_{location}"
            schema, as_json = _parameter_schema(param)
            converted = schemas.convert(schema, param_scope)
            if param.get("description") and isinstance(converted, dict):
                converted = {**converted, "description": str(param["description"])}
            properties[key] = converted
            if location == "path" or param.get("required"):
                required.append(key)
            style = param.get("style") or ("form" if location in ("query", "cookie") else "simple")
            params.append(
                _Param(
                    name=pname,
                    key=key,
                    location=location,
                    style=str(style),
                    explode=bool(param.get("explode", style == "form")),
                    as_json=as_json,
                )
            )
        body_key = body_media = None
        if "requestBody" in op:
            body, body_scope = _deref(op["requestBody"], scope)
            body_media, schema = _body_schema(body)
            body_key = "body" if "body" not in taken else "request_body"
            converted = schemas.convert(schema, body_scope)
            if body.get("description") and isinstance(converted, dict):
                converted = {**converted, "description": str(body["description"])}
            properties[body_key] = converted
            if body.get("required"):
                required.append(body_key)
        parameters: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
        if schemas.defs:
            parameters["$defs"] = schemas.defs
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as exc:
            raise _Skip(f"its schema is not valid JSON Schema: {exc.message}") from None
        return Operation(
            name=name,
            method=method.upper(),
            path=path,
            base_url=server.rstrip("/"),
            description=_description(op, method, path),
            parameters=parameters,
            risk=_risk(name, op, method, risk),
            scopes=_scopes(name, op, scopes),
            tags=tuple(str(t) for t in op.get("tags", [])),
            params=tuple(params),
            body_key=body_key,
            body_media=body_media,
        )

    # --- tools ------------------------------------------------------------------------------
    def tools(
        self, names: Iterable[str] | None = None, tags: Iterable[str] | None = None
    ) -> ToolSet:
        """The operations as tools: all, or only those named or tagged (a per-run allowlist)."""
        chosen = list(self.operations)
        if names is not None or tags is not None:
            wanted, wanted_tags = set(names or ()), set(tags or ())
            unknown = wanted - {o.name for o in chosen}
            if unknown:
                raise KeyError(f"unknown operations: {', '.join(sorted(unknown))}")
            untagged = wanted_tags - {t for o in chosen for t in o.tags}
            if untagged:
                raise KeyError(f"no operation is tagged {', '.join(sorted(untagged))}")
            chosen = [o for o in chosen if o.name in wanted or wanted_tags & set(o.tags)]
        return ToolSet(self._tool(o) for o in chosen)

    def _tool(self, op: Operation) -> Tool:
        validate = schema_validator(op.parameters)

        async def call(arguments: dict[str, Any], context: ToolContext) -> Any:
            return await self._send(op, validate(arguments), context)

        return Tool(
            name=op.name,
            description=op.description,
            parameters=op.parameters,
            call=call,
            risk=op.risk,
            scopes=op.scopes,
            rate_limit=self.rate_limit,
            source=self.source,
            validate=validate,
        )

    # --- calling ----------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    async def _send(self, op: Operation, arguments: dict[str, Any], context: ToolContext) -> Any:
        path = op.path
        query: list[tuple[str, str | int | float | bool | None]] = []
        headers: dict[str, str] = {"Accept": "application/json"}
        cookies: list[str] = []
        for p in op.params:
            if p.key not in arguments:
                continue
            value = arguments[p.key]
            if p.location == "path":
                path = path.replace("{" + p.name + "}", _path_segment(_text(value, p.as_json)))
            elif p.location == "query":
                query.extend(_query(p, value))
            elif p.location == "header":
                headers[p.name] = _text(value, p.as_json)
            else:
                cookies.append(f"{p.name}={quote(_text(value, p.as_json), safe='')}")
        request: dict[str, Any] = {}
        if op.body_key is not None and op.body_key in arguments:
            body = arguments[op.body_key]
            if op.body_media == _FORM_MEDIA:
                request["data"] = {k: _text(v, False) for k, v in (body or {}).items()}
            elif op.body_media == "text/plain":
                request["content"] = str(body)
                headers["Content-Type"] = "text/plain"
            else:
                request["content"] = json.dumps(body)
                headers["Content-Type"] = op.body_media or "application/json"
        url = op.base_url + path
        if context.dry_run and op.method.lower() not in _SAFE_METHODS:
            body_shown = arguments.get(op.body_key) if op.body_key else None
            return {
                "dry_run": True,
                "method": op.method,
                "url": url,
                "query": query,
                "body": body_shown,
            }
        if op.method.lower() not in _SAFE_METHODS:
            headers["Idempotency-Key"] = context.idempotency_key
        if self.auth is not None:  # last, so no argument can replace a credential
            for name, value in self.auth.headers().items():
                if name.lower() == "cookie":
                    cookies.append(value)
                else:
                    headers[name] = value
            query.extend(self.auth.params().items())
        if cookies:
            headers["Cookie"] = "; ".join(cookies)
        where = f"{op.method} {op.path}"
        try:
            async with self._http().stream(
                op.method, url, params=query, headers=headers, timeout=self.timeout, **request
            ) as response:
                body_bytes, truncated = await _read_capped(response, self.max_response_bytes)
        except httpx.TimeoutException:
            raise ToolError(f"{where} timed out after {self.timeout:g}s", retryable=True) from None
        except httpx.TransportError as exc:
            raise ToolError(f"{where} failed: {type(exc).__name__}", retryable=True) from None
        except httpx.HTTPError as exc:
            raise ToolError(f"{where} failed: {type(exc).__name__}", retryable=False) from None
        payload = _decode(body_bytes, response.headers.get("content-type", ""), truncated)
        if response.status_code >= 400:
            raise _http_error(where, response, payload)
        if not body_bytes:
            return {"status": response.status_code}
        return payload

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> OpenAPISource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Skip(Exception):
    """An operation this importer cannot express; it is left out and listed in `skipped`."""


# --- helpers --------------------------------------------------------------------------------
def _tool_name(operation_id: Any, method: str, path: str, prefix: str, taken: set[str]) -> str:
    if operation_id:
        raw = str(operation_id)
    else:  # e.g. GET /store/{id}/items -> get_store_id_items
        raw = f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}"
    base = (prefix + (re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_") or method))[:64]
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[: 64 - len(suffix)] + suffix
    return name


def _server_url(
    op: dict[str, Any], item: dict[str, Any], root: dict[str, Any], document_url: str
) -> str | None:
    for holder in (op, item, root):
        servers = holder.get("servers")
        if servers and isinstance(servers[0], dict) and "url" in servers[0]:
            server = servers[0]
            url = str(server["url"])
            for var, spec in (server.get("variables") or {}).items():
                url = url.replace("{" + var + "}", str(spec.get("default", "")))
            if urlsplit(url).scheme in ("http", "https"):
                return url
            return urljoin(document_url, url) if document_url else None
    return None


def _parameter_schema(param: dict[str, Any]) -> tuple[Any, bool]:
    """A parameter's schema, and whether its value travels as JSON (`content`, not `schema`)."""
    if "schema" in param:
        return param["schema"], False
    for media, spec in (param.get("content") or {}).items():
        if _JSON_MEDIA.match(media) and isinstance(spec, dict):
            return spec.get("schema", {}), True
    raise _Skip(f"parameter {param['name']!r} has neither a schema nor JSON content")


def _body_schema(body: dict[str, Any]) -> tuple[str, Any]:
    content = body.get("content") or {}
    for media in sorted(content, key=lambda m: not _JSON_MEDIA.match(m)):
        if _JSON_MEDIA.match(media) or media in (_FORM_MEDIA, "text/plain"):
            return media, (content[media] or {}).get("schema", {})
    raise _Skip(f"request body media types not supported: {', '.join(content) or 'none'}")


def _description(op: dict[str, Any], method: str, path: str) -> str:
    parts = [str(op.get(k, "")).strip() for k in ("summary", "description")]
    text = "\n\n".join(dict.fromkeys(p for p in parts if p)) or f"{method.upper()} {path}"
    if op.get("deprecated"):
        text = "(deprecated) " + text
    return text[:_MAX_DESCRIPTION]


def _override(name: str, op: dict[str, Any], overrides: Mapping[str, Any], extension: str) -> Any:
    """The operator's mapping (by tool name or operationId) first, then the document's extension."""
    if name in overrides:
        return overrides[name]
    return overrides.get(str(op.get("operationId")), op.get(extension))


def _risk(name: str, op: dict[str, Any], method: str, overrides: dict[str, Risk | str]) -> Risk:
    value = _override(name, op, overrides, "x-aiassist-risk")
    if value is None:
        return _DEFAULT_RISK.get(method, Risk.WRITE)
    try:
        return Risk(value)
    except ValueError:
        raise OpenAPIError(
            f"risk {value!r} is not one of {', '.join(r.value for r in Risk)}"
        ) from None


def _scopes(name: str, op: dict[str, Any], overrides: dict[str, Iterable[str]]) -> frozenset[str]:
    value = _override(name, op, overrides, "x-aiassist-scopes")
    if value is None:
        return frozenset()
    if isinstance(value, str) or not all(isinstance(s, str) for s in value):
        raise OpenAPIError("scopes must be a list of strings")
    return frozenset(value)


def _text(value: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(_text(v, False) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k},{_text(v, False)}" for k, v in value.items())
    return str(value)


def _path_segment(value: str) -> str:
    """One path segment: `/` escaped, and `.`/`..` too, so a value cannot climb the path."""
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def _query(p: _Param, value: Any) -> list[tuple[str, str]]:
    if p.as_json:
        return [(p.name, json.dumps(value))]
    if isinstance(value, list):
        if p.explode and p.style == "form":
            return [(p.name, _text(v, False)) for v in value]
        sep = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(p.style, ",")
        return [(p.name, sep.join(_text(v, False) for v in value))]
    if isinstance(value, dict):
        if p.style == "deepObject":
            return [(f"{p.name}[{k}]", _text(v, False)) for k, v in value.items()]
        if p.explode:
            return [(str(k), _text(v, False)) for k, v in value.items()]
    return [(p.name, _text(value, False))]


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def _decode(body: bytes, content_type: str, truncated: bool) -> Any:
    if not truncated and ("json" in content_type or body[:1] in (b"{", b"[")):
        try:
            return json.loads(body)
        except ValueError:
            pass
    text = body.decode("utf-8", errors="replace")
    return {"text": text, "truncated": True} if truncated else text


def _http_error(where: str, response: httpx.Response, payload: Any) -> ToolError:
    status = response.status_code
    retryable = status >= 500 or status in _RETRYABLE_STATUS
    shown = payload.get("detail", payload) if isinstance(payload, dict) else payload
    summary = shown if isinstance(shown, str) else json.dumps(shown, default=str)
    data: dict[str, Any] = {"status": status, "body": _clip(payload, 2000)}
    if "retry-after" in response.headers:
        data["retry_after"] = response.headers["retry-after"]
    message = f"{where} answered {status} {response.reason_phrase}: {summary[:300]}"
    return ToolError(message, retryable=retryable, data=data)


def _clip(payload: Any, limit: int) -> Any:
    text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    if len(text) <= limit:
        return payload
    return text[:limit] + "..."
