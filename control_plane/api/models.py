"""The model registry API: built-in presets and registered checkpoint directories."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from control_plane.api.deps import CallerDep, SessionDep
from control_plane.registry import ModelList, ModelPublic, list_models, public_record, register

router = APIRouter(prefix="/api/2.0/models", tags=["models"])


class RegisterModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    version: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    source: str = Field(min_length=1, description="a Hugging Face checkpoint directory")


@router.post("", response_model=ModelPublic, response_model_exclude_none=True)
def register_model(body: RegisterModel, session: SessionDep, caller: CallerDep) -> ModelPublic:
    record = register(
        session, caller.workspace_id, caller.name, body.name, body.version, body.source
    )
    view = public_record(record)
    session.commit()
    return view


@router.get("", response_model=ModelList, response_model_exclude_none=True)
def get_models(session: SessionDep, caller: CallerDep) -> ModelList:
    return list_models(session, caller.workspace_id)
