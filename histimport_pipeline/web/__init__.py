"""The import service: an HTTP API and server-rendered history pages over the engine.

``app.create_app`` builds the FastAPI application; ``histimport serve`` runs it on uvicorn.
The routes call the engine (``engine.tracking.history``, ``lineage``, ``overview``,
``failed_rows``, ``rollback``, ``reconciliation.review``, ``uploads``) and hold no SQL; this
package never imports dagster.

* ``config``: the service's settings from the environment (tokens, links, upload limit).
* ``auth``: tokens, roles and the callers they stand for; CSRF tokens for the pages' forms.
* ``schemas``: the JSON shapes of the API (pydantic models, shown at ``/docs``).
* ``api/``: the JSON endpoints, one module per resource.
* ``pages``: the HTML pages (Jinja2 templates in ``templates/``, CSS and JS in ``static/``).
* ``multipart``: a streaming reader of ``multipart/form-data`` uploads.
"""
