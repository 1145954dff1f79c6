"""The OpenAPI document says what this deployment does: with API_KEYS set, every /v1 operation declares its
security schemes and its 401."""
from fastapi import FastAPI

from app.core.config import API_PREFIX

SECURITY_SCHEMES = {
    "bearerKey": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    "headerKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "X-API-Key: <API key>"},
}
UNAUTHORIZED = {
    "description": "missing or invalid API key (API_KEYS is set on this server)",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}
ERROR_BODY = {"title": "ErrorBody", "type": "object", "required": ["detail"],
              "properties": {"detail": {"title": "Detail", "type": "string"}}}


def declare_api_keys(app: FastAPI) -> None:
    """Add the API-key security schemes and the 401 response to the generated schema (built once, cached)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
        components.setdefault("schemas", {}).setdefault("ErrorBody", ERROR_BODY)
        for path, operations in schema.get("paths", {}).items():
            if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearerKey": []}, {"headerKey": []}]
                operation.setdefault("responses", {})["401"] = UNAUTHORIZED
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
