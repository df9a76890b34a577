"""``/api/reviews``: values waiting for a reviewer, and the decisions operators take."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from histimport_pipeline.engine.models import MatchDecision
from histimport_pipeline.engine.reconciliation.review import decide_match, list_matches
from histimport_pipeline.web import schemas
from histimport_pipeline.web.app import Operator, Reader, State

router = APIRouter(tags=["reviews"])


@router.get("/reviews", response_model=list[schemas.Review])
def get_reviews(
    state: State,
    _caller: Reader,
    dataset: str | None = None,
    import_id: int | None = None,
    decision: MatchDecision = MatchDecision.NEEDS_REVIEW,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Reconciliation decisions, by default those waiting for a reviewer (one item per
    value, naming every import that waits on it)."""
    return list_matches(
        state.db, import_id=import_id, dataset=dataset, decision=decision, limit=limit
    )


@router.post("/reviews/{match_id}/accept", response_model=schemas.Review)
def post_accept(
    match_id: int,
    state: State,
    caller: Operator,
    body: Annotated[schemas.Decision | None, Body()] = None,
) -> dict[str, Any]:
    """Accept a value as ``entity_id`` (else the suggested candidate), for every import
    that waits on it; the next imports match it exactly."""
    entity_id = body.entity_id if body else None
    return decide_match(state.db, match_id, accept=True, entity_id=entity_id, actor=caller.label)


@router.post("/reviews/{match_id}/reject", response_model=schemas.Review)
def post_reject(match_id: int, state: State, caller: Operator) -> dict[str, Any]:
    """Reject a value: its rows follow the reference's ``on_unmatched`` when applied."""
    return decide_match(state.db, match_id, accept=False, actor=caller.label)
