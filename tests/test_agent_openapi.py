"""OpenAPI operations as tools: import (refs, recursion, 3.0, 3.1), calls, errors, policy."""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from aiassist.agent import Risk, ToolContext, ToolError
from aiassist.agent.sources import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    FromEnv,
    OpenAPIError,
    OpenAPISource,
)
from aiassist.server import create_app
from aiassist.settings import Settings
from tests.conftest import free_port, wait_healthy

TOKEN = "s3cr3t-token-value"

# A petstore-style OpenAPI 3.0 document: shared parameters and bodies by $ref, a recursive
# Category (a category has a parent category), a nullable field, operations of every method.
PETSTORE: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Petstore", "version": "1.0.0"},
    "servers": [{"url": "http://petstore.invalid/v1"}],
    "tags": [{"name": "pets"}, {"name": "store"}],
    "paths": {
        "/pets": {
            "get": {
                "operationId": "listPets",
                "summary": "List pets",
                "description": "Pets in the store, newest first.",
                "tags": ["pets"],
                "parameters": [
                    {"$ref": "#/components/parameters/limit"},
                    {
                        "name": "tags",
                        "in": "query",
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                ],
                "responses": {"200": {"description": "pets"}},
            },
            "post": {
                "operationId": "createPet",
                "summary": "Add a pet",
                "tags": ["pets"],
                "x-aiassist-scopes": ["pets:write"],
                "requestBody": {"$ref": "#/components/requestBodies/Pet"},
                "responses": {"201": {"description": "created"}},
            },
        },
        "/pets/{petId}": {
            "parameters": [
                {
                    "name": "petId",
                    "in": "path",
                    "required": True,
                    "description": "The pet's id",
                    "schema": {"type": "integer", "minimum": 1},
                }
            ],
            "get": {
                "operationId": "showPetById",
                "summary": "Info for a pet",
                "tags": ["pets"],
                "responses": {"200": {"description": "a pet"}},
            },
            "delete": {
                "operationId": "deletePet",
                "summary": "Delete a pet",
                "tags": ["pets"],
                "parameters": [
                    {"name": "X-Reason", "in": "header", "schema": {"type": "string"}},
                    {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {"204": {"description": "deleted"}},
            },
            "patch": {
                "operationId": "renamePet",
                "tags": ["pets"],
                "x-aiassist-risk": "irreversible",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"name": {"type": "string"}},
                                "required": ["name"],
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "renamed"}},
            },
        },
        "/store/inventory": {
            "get": {
                "tags": ["store"],
                "summary": "Counts by status",
                "responses": {"200": {"description": "counts"}},
            },
        },
        "/store/upload": {
            "post": {
                "operationId": "upload",
                "requestBody": {"content": {"application/octet-stream": {}}},
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/flaky/{status}": {
            "get": {
                "operationId": "flaky",
                "parameters": [
                    {
                        "name": "status",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                    }
                ],
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/slow": {
            "get": {"operationId": "slow", "responses": {"200": {"description": "ok"}}},
        },
    },
    "components": {
        "parameters": {
            "limit": {
                "name": "limit",
                "in": "query",
                "description": "How many items to return at one time (max 100)",
                "schema": {
                    "type": "integer",
                    "maximum": 100,
                    "exclusiveMinimum": True,
                    "minimum": 0,
                },
            }
        },
        "requestBodies": {
            "Pet": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewPet"}}
                },
            }
        },
        "schemas": {
            "NewPet": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "example": "doggie"},
                    "tag": {"type": "string", "nullable": True},
                    "category": {"$ref": "#/components/schemas/Category"},
                    "status": {"type": "string", "enum": ["available", "sold"]},
                },
                "additionalProperties": False,
            },
            "Category": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parent": {"$ref": "#/components/schemas/Category"},
                },
                "xml": {"name": "category"},
            },
        },
    },
}

# OpenAPI 3.1: JSON Schema 2020-12 types (a list with "null"), numeric exclusive bounds, a
# recursive tree through `items`, and a property literally named "default".
TREES_31: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Trees", "version": "1"},
    "servers": [{"url": "https://{host}/api", "variables": {"host": {"default": "trees.invalid"}}}],
    "paths": {
        "/trees": {
            "post": {
                "operationId": "plantTree",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Tree"}}
                    },
                },
                "responses": {"201": {"description": "planted"}},
            }
        }
    },
    "components": {
        "schemas": {
            "Tree": {
                "type": "object",
                "required": ["value"],
                "properties": {
                    "value": {"type": "number", "exclusiveMinimum": 0},
                    "label": {"type": ["string", "null"]},
                    "default": {"type": "boolean"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Tree"}},
                },
            }
        }
    },
}


def context(**overrides: Any) -> ToolContext:
    values: dict[str, Any] = {
        "run_id": "run-1",
        "call_id": "call-1",
        "idempotency_key": "idem-123",
        "principal": "tester",
    }
    return ToolContext(**(values | overrides))


# --- a real backend on loopback ------------------------------------------------------------
class Backend:
    def __init__(self) -> None:
        self.pets: dict[int, dict[str, Any]] = {1: {"id": 1, "name": "Rex", "tag": "dog"}}
        self.requests: list[dict[str, Any]] = []


def backend_app(state: Backend) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        if request.url.path != "/healthz":
            state.requests.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "query": list(request.query_params.multi_items()),
                    "headers": dict(request.headers),
                }
            )
        response: Response = await call_next(request)
        return response

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/pets")
    def list_pets(request: Request) -> list[dict[str, Any]]:
        limit = int(request.query_params.get("limit", 100))
        tags = request.query_params.getlist("tags")
        pets = [p for p in state.pets.values() if not tags or p.get("tag") in tags]
        return pets[:limit]

    @app.post("/v1/pets", status_code=201)
    async def create_pet(request: Request) -> Any:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"detail": "bad token"}, status_code=401)
        pet = {"id": max(state.pets) + 1, **(await request.json())}
        state.pets[pet["id"]] = pet
        return pet

    @app.get("/v1/pets/{pet_id}")
    def show_pet(pet_id: int) -> Any:
        if pet_id not in state.pets:
            return JSONResponse({"detail": f"no pet {pet_id}"}, status_code=404)
        return state.pets[pet_id]

    @app.delete("/v1/pets/{pet_id}", status_code=204)
    def delete_pet(pet_id: int) -> Response:
        state.pets.pop(pet_id, None)
        return Response(status_code=204)

    @app.patch("/v1/pets/{pet_id}")
    async def rename_pet(pet_id: int, request: Request) -> Any:
        form = await request.form()
        state.pets[pet_id]["name"] = form["name"]
        return state.pets[pet_id]

    @app.get("/v1/flaky/{status}")
    def flaky(status: int) -> Response:
        headers = {"Retry-After": "7"} if status == 429 else {}
        return JSONResponse({"detail": f"status {status}"}, status_code=status, headers=headers)

    @app.get("/v1/slow")
    async def slow() -> dict[str, bool]:
        await anyio.sleep(5)
        return {"ok": True}

    @app.get("/api/v1/echo")
    def echo(request: Request) -> dict[str, Any]:
        return {"headers": dict(request.headers), "query": dict(request.query_params)}

    return app


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` under uvicorn on a free loopback port, in a thread, for the `with` block."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[str, Backend]]:
    state = Backend()
    with serving(backend_app(state)) as url:
        yield url, state


@pytest.fixture
def petstore(backend: tuple[str, Backend], monkeypatch: pytest.MonkeyPatch) -> OpenAPISource:
    url, _ = backend
    monkeypatch.setenv("PETSTORE_TOKEN", TOKEN)
    return OpenAPISource(
        PETSTORE,
        base_url=f"{url}/v1",
        auth=BearerAuth(FromEnv("PETSTORE_TOKEN")),
        risk={"showPetById": "read"},
        timeout=10.0,
    )


class StaticFiles:
    """Documents served by the standard library's HTTP server on loopback."""

    def __init__(self, files: dict[str, bytes]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body or b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- import --------------------------------------------------------------------------------
def test_petstore_operations_become_tools(petstore: OpenAPISource) -> None:
    tools = {t.name: t for t in petstore.tools()}
    assert set(tools) == {
        "listPets",
        "createPet",
        "showPetById",
        "deletePet",
        "renamePet",
        "get_store_inventory",
        "flaky",
        "slow",
    }
    assert "upload" in petstore.skipped and "octet-stream" in petstore.skipped["upload"]
    assert tools["listPets"].risk is Risk.READ
    assert tools["createPet"].risk is Risk.WRITE
    assert tools["deletePet"].risk is Risk.IRREVERSIBLE
    assert tools["renamePet"].risk is Risk.IRREVERSIBLE  # x-aiassist-risk
    assert tools["showPetById"].risk is Risk.READ  # the mapping
    assert tools["createPet"].scopes == {"pets:write"}
    assert tools["listPets"].description == "List pets\n\nPets in the store, newest first."
    assert tools["get_store_inventory"].description == "Counts by status"
    assert all(t.source == "openapi" for t in tools.values())

    listing = tools["listPets"].parameters
    assert listing["properties"]["limit"] == {
        "type": "integer",
        "maximum": 100,
        "exclusiveMinimum": 0,
        "description": "How many items to return at one time (max 100)",
    }
    assert listing["required"] == [] and listing["additionalProperties"] is False
    deleting = tools["deletePet"].parameters
    assert set(deleting["properties"]) == {"petId", "X-Reason"}  # Authorization is ignored
    assert deleting["required"] == ["petId"]

    creating = tools["createPet"].parameters
    assert creating["required"] == ["body"]
    assert creating["properties"]["body"] == {"$ref": "#/$defs/NewPet"}
    new_pet = creating["$defs"]["NewPet"]
    assert new_pet["properties"]["tag"] == {"type": ["string", "null"]}
    assert "example" not in new_pet["properties"]["name"]
    category = creating["$defs"]["Category"]
    assert category["properties"]["parent"] == {"$ref": "#/$defs/Category"}  # recursion kept
    assert "xml" not in category
    for t in tools.values():
        jsonschema.Draft202012Validator.check_schema(t.parameters)
        json.dumps(t.spec())
        assert TOKEN not in json.dumps(t.spec())


def test_recursive_schema_validates_deep_values(petstore: OpenAPISource) -> None:
    create = petstore.tools().get("createPet")
    assert create is not None
    deep = {"name": "a", "parent": {"name": "b", "parent": {"name": "c"}}}
    arguments = {"body": {"name": "Tom", "category": deep}}
    assert create.check(arguments) == arguments
    bad = copy.deepcopy(arguments)
    bad["body"]["category"]["parent"]["parent"]["name"] = 7
    with pytest.raises(ToolError, match=r"body\.category\.parent\.parent\.name: 7 is not of type"):
        create.check(bad)


def test_validation_errors_name_the_field(petstore: OpenAPISource) -> None:
    tools = petstore.tools()
    show, create = tools.get("showPetById"), tools.get("createPet")
    assert show is not None and create is not None
    with pytest.raises(ToolError, match="'petId' is a required property") as missing:
        show.check({})
    assert missing.value.retryable is False
    with pytest.raises(ToolError, match=r"petId: 0 is less than the minimum of 1"):
        show.check({"petId": 0})
    with pytest.raises(ToolError, match=r"'admin' was unexpected"):
        show.check({"petId": 1, "admin": True})
    with pytest.raises(ToolError, match=r"body.status: 'lost' is not one of"):
        create.check({"body": {"name": "x", "status": "lost"}})


def test_openapi_31_document() -> None:
    source = OpenAPISource(TREES_31)
    (plant,) = source.tools()
    assert plant.name == "plantTree" and plant.risk is Risk.WRITE
    assert source.operations[0].base_url == "https://trees.invalid/api"
    tree = plant.parameters["$defs"]["Tree"]
    assert tree["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    assert tree["properties"]["default"] == {"type": "boolean"}  # a property, not a keyword
    ok = {"body": {"value": 1, "label": None, "children": [{"value": 2, "children": []}]}}
    assert plant.check(ok) == ok
    with pytest.raises(ToolError, match=r"body.children.0.value: 0 is less than or equal"):
        plant.check({"body": {"value": 1, "children": [{"value": 0}]}})


def test_names_are_sanitised_and_unique() -> None:
    spec: dict[str, Any] = {
        "openapi": "3.0.0",
        "info": {"title": "t", "version": "1"},
        "servers": [{"url": "http://x.invalid"}],
        "paths": {
            "/a/{id}/b.json": {
                "get": {"responses": {}},
                "put": {"operationId": "pets.list/all!", "responses": {}},
                "post": {"operationId": "x" * 80, "responses": {}},
                "patch": {"operationId": "x" * 80, "responses": {}},
            }
        },
    }
    names = [o.name for o in OpenAPISource(spec, prefix="crm_").operations]
    assert names == [
        "crm_get_a_id_b_json",
        "crm_pets_list_all",
        "crm_" + "x" * 60,
        "crm_" + "x" * 58 + "_2",
    ]


def test_allowlist_by_name_and_tag(petstore: OpenAPISource) -> None:
    assert [t.name for t in petstore.tools(names=["deletePet"])] == ["deletePet"]
    store = petstore.tools(tags=["store"], names=["createPet"])
    assert sorted(t.name for t in store) == ["createPet", "get_store_inventory"]
    with pytest.raises(KeyError, match="dropTables"):
        petstore.tools(names=["dropTables"])
    with pytest.raises(KeyError, match="no operation is tagged users"):
        petstore.tools(tags=["users"])


def test_bad_documents_fail_at_import() -> None:
    broken = copy.deepcopy(PETSTORE)
    broken["paths"]["/pets"]["post"]["requestBody"] = {"$ref": "#/components/requestBodies/Nope"}
    with pytest.raises(OpenAPIError, match=r"POST /pets \(createPet\): cannot resolve \$ref"):
        OpenAPISource(broken)
    with pytest.raises(OpenAPIError, match="unknown operations"):
        OpenAPISource(PETSTORE, risk={"deletePets": "read"})  # a typo must not pass silently
    with pytest.raises(OpenAPIError, match="risk 'harmless' is not one of"):
        OpenAPISource(PETSTORE, risk={"deletePet": "harmless"})
    with pytest.raises(OpenAPIError, match="not an OpenAPI 3"):
        OpenAPISource({"swagger": "2.0", "paths": {}})
    no_server = {k: v for k, v in PETSTORE.items() if k != "servers"}
    with pytest.raises(OpenAPIError, match="no base URL"):
        OpenAPISource(no_server)


# --- references across documents -------------------------------------------------------------
def test_local_file_references(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "models.yaml").write_text(
        "Owner:\n"
        "  type: object\n"
        "  required: [name]\n"
        "  properties:\n"
        "    name: {type: string}\n"
        "    pets: {type: array, items: {$ref: '../api.json#/components/schemas/Pet'}}\n"
    )
    spec = {
        "openapi": "3.0.3",
        "info": {"title": "files", "version": "1"},
        "servers": [{"url": "http://files.invalid"}],
        "paths": {
            "/owners": {
                "post": {
                    "operationId": "createOwner",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "schemas/models.yaml#/Owner"}}
                        }
                    },
                    "responses": {},
                }
            }
        },
        "components": {
            "schemas": {
                "Pet": {
                    "type": "object",
                    "properties": {"owner": {"$ref": "schemas/models.yaml#/Owner"}},
                }
            }
        },
    }
    (tmp_path / "api.json").write_text(json.dumps(spec))
    (tool,) = OpenAPISource(tmp_path / "api.json").tools()
    defs = tool.parameters["$defs"]
    assert defs["Owner"]["properties"]["pets"]["items"] == {"$ref": "#/$defs/Pet"}
    assert defs["Pet"]["properties"]["owner"] == {"$ref": "#/$defs/Owner"}  # a cycle across files
    value = {"body": {"name": "ann", "pets": [{"owner": {"name": "bob", "pets": []}}]}}
    assert tool.check(value) == value
    with pytest.raises(OpenAPIError, match="relative reference"):
        OpenAPISource(spec)  # a mapping without base_uri cannot resolve relative files
    assert len(OpenAPISource(spec, base_uri=(tmp_path / "api.json").as_uri()).operations) == 1


def test_remote_references_from_a_loopback_server() -> None:
    common = {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}}
    people = {
        "Person": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "address": {"$ref": "common.json#/Address"},
                "friends": {"type": "array", "items": {"$ref": "#/Person"}},
            },
        }
    }
    files = {
        "/schemas/common.json": json.dumps(common).encode(),
        "/schemas/people.json": json.dumps(people).encode(),
    }
    static = StaticFiles(files)
    try:
        spec = {
            "openapi": "3.1.0",
            "info": {"title": "remote", "version": "1"},
            "servers": [{"url": "/api/v1"}],
            "paths": {
                "/people": {
                    "post": {
                        "operationId": "addPerson",
                        "requestBody": {
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "schemas/people.json#/Person"}
                                }
                            }
                        },
                        "responses": {},
                    }
                }
            },
        }
        files["/openapi.json"] = json.dumps(spec).encode()  # the server reads `files` live
        source = OpenAPISource(f"{static.url}/openapi.json")
        (tool,) = source.tools()
        assert source.operations[0].base_url == f"{static.url}/api/v1"  # relative server
        defs = tool.parameters["$defs"]
        assert defs["Person"]["properties"]["address"] == {"$ref": "#/$defs/Address"}
        assert defs["Person"]["properties"]["friends"]["items"] == {"$ref": "#/$defs/Person"}
        assert defs["Address"]["properties"]["city"] == {"type": "string"}
        with pytest.raises(ToolError, match=r"body.address.city: 5 is not of type"):
            tool.check({"body": {"name": "a", "address": {"city": 5}}})

        # a document fetched over HTTP may not pull local files into what a model sees
        spec["paths"]["/people"]["post"]["requestBody"]["content"]["application/json"] = {
            "schema": {"$ref": "file:///etc/passwd"}
        }
        files["/evil.json"] = json.dumps(spec).encode()
        with pytest.raises(OpenAPIError, match="may not reference a file"):
            OpenAPISource(f"{static.url}/evil.json")
        with pytest.raises(OpenAPIError, match="HTTP 404"):
            OpenAPISource(f"{static.url}/missing.json")
    finally:
        static.close()


# --- calls ---------------------------------------------------------------------------------
async def test_calls_reach_the_backend(
    petstore: OpenAPISource, backend: tuple[str, Backend]
) -> None:
    _, state = backend
    tools = petstore.tools()
    async with petstore:
        listing = tools.get("listPets")
        assert listing is not None
        pets = await listing.call({"limit": 5, "tags": ["dog", "cat"]}, context())
        assert pets == [{"id": 1, "name": "Rex", "tag": "dog"}]
        sent = state.requests[-1]
        assert sent["query"] == [("limit", "5"), ("tags", "dog"), ("tags", "cat")]
        assert "idempotency-key" not in sent["headers"]  # a read needs none

        create = tools.get("createPet")
        assert create is not None
        pet = await create.call({"body": {"name": "Tom", "tag": None}}, context())
        assert pet["name"] == "Tom" and pet["id"] in state.pets
        sent = state.requests[-1]
        assert sent["headers"]["authorization"] == f"Bearer {TOKEN}"
        assert sent["headers"]["idempotency-key"] == "idem-123"
        assert sent["headers"]["content-type"] == "application/json"

        rename = tools.get("renamePet")
        assert rename is not None
        renamed = await rename.call({"petId": pet["id"], "body": {"name": "Tim"}}, context())
        assert renamed["name"] == "Tim"

        delete = tools.get("deletePet")
        assert delete is not None
        done = await delete.call({"petId": pet["id"], "X-Reason": "adopted"}, context())
        assert done == {"status": 204} and pet["id"] not in state.pets
        assert state.requests[-1]["headers"]["x-reason"] == "adopted"
        assert state.requests[-1]["method"] == "DELETE"


async def test_dry_run_sends_no_write(
    petstore: OpenAPISource, backend: tuple[str, Backend]
) -> None:
    _, state = backend
    before = len(state.requests)
    delete = petstore.tools().get("deletePet")
    assert delete is not None
    async with petstore:
        preview = await delete.call({"petId": 1}, context(dry_run=True))
    assert preview["dry_run"] is True and preview["method"] == "DELETE"
    assert preview["url"].endswith("/v1/pets/1") and TOKEN not in json.dumps(preview)
    assert len(state.requests) == before and 1 in state.pets


async def test_path_values_cannot_climb_the_path() -> None:
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "files", "version": "1"},
        "servers": [{"url": "http://files.invalid/v1"}],
        "paths": {
            "/files/{name}": {
                "delete": {
                    "operationId": "deleteFile",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {},
                }
            }
        },
    }
    (delete,) = OpenAPISource(spec).tools()
    for sneaky, sent in [("..", "%2E%2E"), ("../admin", "..%2Fadmin"), ("a b", "a%20b")]:
        preview = await delete.call({"name": sneaky}, context(dry_run=True))
        assert preview["url"] == f"http://files.invalid/v1/files/{sent}"


async def test_http_errors_become_tool_errors(
    petstore: OpenAPISource, backend: tuple[str, Backend]
) -> None:
    tools = petstore.tools()
    show, flaky = tools.get("showPetById"), tools.get("flaky")
    assert show is not None and flaky is not None
    impatient = OpenAPISource(PETSTORE, base_url=f"{backend[0]}/v1", timeout=1.0)
    slow = impatient.tools().get("slow")
    assert slow is not None
    async with petstore:
        with pytest.raises(ToolError) as not_found:
            await show.call({"petId": 999}, context())
        assert not_found.value.retryable is False
        assert "answered 404 Not Found: no pet 999" in not_found.value.message
        assert not_found.value.data == {"status": 404, "body": {"detail": "no pet 999"}}

        with pytest.raises(ToolError) as server_error:
            await flaky.call({"status": 503}, context())
        assert server_error.value.retryable is True

        with pytest.raises(ToolError) as limited:
            await flaky.call({"status": 429}, context())
        assert limited.value.retryable is True and limited.value.data["retry_after"] == "7"

    async with impatient:
        started = time.monotonic()
        with pytest.raises(ToolError, match="timed out after 1s") as timed_out:
            await slow.call({}, context())
        assert timed_out.value.retryable is True and time.monotonic() - started < 4.5


async def test_unreachable_backend_is_retryable() -> None:
    source = OpenAPISource(PETSTORE, base_url=f"http://127.0.0.1:{free_port()}/v1", timeout=2)
    listing = source.tools().get("listPets")
    assert listing is not None
    async with source:
        with pytest.raises(ToolError, match="GET /pets failed: ConnectError") as refused:
            await listing.call({}, context())
    assert refused.value.retryable is True


async def test_credentials_are_sent_and_never_shown(
    backend: tuple[str, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = backend
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "echo", "version": "1"},
        "paths": {"/echo": {"get": {"operationId": "echo", "responses": {}}}},
    }
    monkeypatch.delenv("ECHO_KEY", raising=False)
    for auth, check in [
        (ApiKeyAuth("X-API-Key", SecretStr("k-123")), lambda r: r["headers"]["x-api-key"]),
        (ApiKeyAuth("key", SecretStr("k-123"), "query"), lambda r: r["query"]["key"]),
        (BasicAuth("ann", SecretStr("k-123")), lambda r: r["headers"]["authorization"]),
    ]:
        assert "k-123" not in repr(auth)
        source = OpenAPISource(spec, base_url=f"{url}/api/v1", auth=auth)
        async with source:
            (echo,) = source.tools()
            assert "k-123" not in json.dumps(echo.spec())
            answer = await echo.call({}, context())
        assert check(answer) in ("k-123", "Basic YW5uOmstMTIz")
    missing = OpenAPISource(spec, base_url=f"{url}/api/v1", auth=BearerAuth(FromEnv("ECHO_KEY")))
    async with missing:
        (echo,) = missing.tools()
        with pytest.raises(ToolError, match="credential variable ECHO_KEY is not set"):
            await echo.call({}, context())


# --- the project's own API -------------------------------------------------------------------
def test_the_services_own_openapi(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, auth=False)
    app = create_app(settings)
    source = OpenAPISource(app.openapi(), base_url="http://127.0.0.1:1")
    tools = {t.name: t for t in source.tools()}
    assert not source.skipped
    assert tools["list_modules_v1_modules_get"].risk is Risk.READ
    assert tools["list_modules_v1_modules_get"].description.startswith("The decision modules")
    decide = next(t for n, t in tools.items() if n.startswith("decide_v1_priority"))
    assert decide.risk is Risk.WRITE and decide.parameters["required"] == ["body"]
    assert decide.parameters["$defs"]  # its Pydantic models, as $defs
    for t in tools.values():
        jsonschema.Draft202012Validator.check_schema(t.parameters)
        assert len(t.description) <= 2000


@pytest.fixture
def own_service(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, auth=False)
    app = create_app(settings)
    with serving(app) as url:
        yield url, app.openapi()


async def test_calling_the_running_service(own_service: tuple[str, dict[str, Any]]) -> None:
    url, document = own_service
    async with OpenAPISource(document, base_url=url) as source:
        listing = source.tools().get("list_modules_v1_modules_get")
        assert listing is not None
        modules = await listing.call({}, context())
    assert {"priority", "reference"} <= {m["name"] for m in modules}
