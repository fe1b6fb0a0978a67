"""The API's documentation page, served whole by the gateway so it works without internet
access: Swagger UI (flask-smorest's page at /docs, reading /openapi.json) with its scripts and
styles from the flask-swagger-ui package rather than from a CDN.

    GET /docs                               # the page (OPENAPI_SWAGGER_UI_PATH)
    GET /docs/assets/swagger-ui-bundle.js   # its assets (OPENAPI_SWAGGER_UI_URL)
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint

ASSETS_PATH = "/docs/assets"

# swagger-ui-dist's files, as the package ships them
assets = Blueprint(
    "docs_assets",
    __name__,
    static_folder=str(files("flask_swagger_ui") / "dist"),
    static_url_path=ASSETS_PATH,
)
