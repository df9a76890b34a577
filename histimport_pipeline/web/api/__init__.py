"""The JSON API, mounted at ``/api``: one module per resource."""

from fastapi import APIRouter

from histimport_pipeline.web.api import data, imports, reviews, uploads

router = APIRouter()
for module in (imports, data, reviews, uploads):
    router.include_router(module.router)
