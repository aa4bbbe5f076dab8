"""/users routes: validation and status codes here, logic in services.users."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from ..dependencies import SessionDep
from ..schemas import PostOut, UserDetail, UserSummary
from ..services import users as service

router = APIRouter(prefix="/users", tags=["users"])


@router.get("", response_model=list[UserSummary])
def list_users(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[UserSummary]:
    """A page of users (at most 100)."""
    return [UserSummary.model_validate(u) for u in service.list_users(session, limit=limit, offset=offset)]


@router.get("/{user_id}", response_model=UserDetail)
def read_user(user_id: int, session: SessionDep) -> UserDetail:
    """One user with their post count; 404 if unknown."""
    try:
        return service.get_user_detail(session, user_id)
    except service.UserNotFound:
        raise HTTPException(status_code=404, detail="user not found") from None


@router.get("/{user_id}/posts", response_model=list[PostOut])
def read_posts(user_id: int, session: SessionDep) -> list[PostOut]:
    """A user's posts; 404 if the user is unknown."""
    try:
        return [PostOut.model_validate(p) for p in service.list_posts(session, user_id)]
    except service.UserNotFound:
        raise HTTPException(status_code=404, detail="user not found") from None
