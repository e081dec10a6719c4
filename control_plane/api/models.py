"""The model registry API: built-in presets and registered checkpoint directories, and (for
account admins) which workspaces may use a directory another workspace registered."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.auth import Caller
from control_plane.errors import PermissionDenied
from control_plane.registry import (
    ModelList,
    ModelPublic,
    ModelSourceList,
    ModelSourcePublic,
    list_models,
    list_sources,
    public_record,
    register,
    share_source,
)

router = APIRouter(prefix="/api/2.0/models", tags=["models"])


class RegisterModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    version: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    source: str = Field(
        min_length=1,
        max_length=4096,
        description="a Hugging Face checkpoint directory under the server's model roots",
    )


class ShareModelSource(BaseModel):
    model_config = ConfigDict(extra="ignore")
    source: str = Field(
        min_length=1, max_length=4096, description="a registered directory, as listed"
    )
    add_workspace_ids: list[str] = Field(default_factory=list, max_length=1000)
    remove_workspace_ids: list[str] = Field(default_factory=list, max_length=1000)


@router.post("", response_model=ModelPublic, response_model_exclude_none=True)
def register_model(
    body: RegisterModel, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> ModelPublic:
    record = register(
        session,
        caller.workspace_id,
        caller.name,
        body.name,
        body.version,
        body.source,
        plane.settings.model_roots,
        plane.settings.system_models,
    )
    view = public_record(record)
    session.commit()
    return view


@router.get("", response_model=ModelList, response_model_exclude_none=True)
def get_models(session: SessionDep, caller: CallerDep, plane: PlaneDep) -> ModelList:
    return list_models(session, caller.workspace_id, plane.settings.system_models)


def _require_account_admin(caller: Caller) -> None:
    if not caller.is_account_admin:
        raise PermissionDenied("only account admins list and share model sources")


@router.get("/sources", response_model=ModelSourceList)
def get_model_sources(session: SessionDep, caller: CallerDep) -> ModelSourceList:
    _require_account_admin(caller)
    return list_sources(session, caller.account_id)


@router.patch("/sources", response_model=ModelSourcePublic)
def share_model_source(
    body: ShareModelSource, session: SessionDep, caller: CallerDep
) -> ModelSourcePublic:
    _require_account_admin(caller)
    view = share_source(
        session,
        caller.account_id,
        body.source,
        body.add_workspace_ids,
        body.remove_workspace_ids,
    )
    session.commit()
    return view
