"""The model registry: built-in presets (version "1") and registered Hugging Face
checkpoint directories, per workspace. Served entities name models by
`entity_name` / `entity_version`; `resolve` turns that into a `ModelSource` for workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.db.models import RegisteredModel
from control_plane.errors import AlreadyExists, InvalidParameter
from control_plane.ids import to_millis, utcnow
from workers.model.checkpoint import verify_checkpoint
from workers.model.hf_config import CheckpointError
from workers.model.presets import PRESETS
from workers.model.source import ModelSource

PRESET_VERSION = "1"


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    family: str  # dbrx | mixtral
    source: ModelSource
    builtin: bool

    def public(self) -> ModelPublic:
        return ModelPublic(
            name=self.name,
            version=self.version,
            model_type=self.family,
            source=self.source.checkpoint or f"preset:{self.name}",
            builtin=self.builtin,
        )


class ModelPublic(BaseModel):
    """A model one can serve: a built-in preset or a registered checkpoint."""

    name: str
    version: str
    model_type: str = Field(description="the model family: dbrx or mixtral")
    source: str = Field(description="the checkpoint directory, or preset:<name>")
    builtin: bool
    creator: str | None = None
    creation_timestamp: int | None = Field(default=None, description="epoch milliseconds")


class ModelList(BaseModel):
    models: list[ModelPublic]


def builtin_models() -> list[ResolvedModel]:
    """Presets with weights of their own (the real-shape presets need a checkpoint)."""
    return [
        ResolvedModel(name, PRESET_VERSION, spec.args.family, ModelSource(preset=name), True)
        for name, spec in PRESETS.items()
        if spec.random_weights
    ]


def resolve(session: Session, workspace_id: str | None, name: str, version: str) -> ResolvedModel:
    for model in builtin_models():
        if model.name == name:
            if version != PRESET_VERSION:
                raise InvalidParameter(
                    f"built-in model {name!r} has only version {PRESET_VERSION!r}, not {version!r}"
                )
            return model
    record = None
    if workspace_id is not None:
        record = session.scalars(
            select(RegisteredModel).where(
                RegisteredModel.workspace_id == workspace_id,
                RegisteredModel.name == name,
                RegisteredModel.version == version,
            )
        ).first()
    if record is None:
        raise InvalidParameter(
            f"model {name!r} version {version!r} is not registered in this workspace; "
            "GET /api/2.0/models lists the models you can serve, "
            "POST /api/2.0/models registers a checkpoint"
        )
    source = ModelSource(
        checkpoint=record.source, tokenizer=_tokenizer_for(Path(record.source), record.model_type)
    )
    return ResolvedModel(record.name, record.version, record.model_type, source, False)


def _tokenizer_for(path: Path, family: str) -> str | None:
    """The checkpoint's own tokenizer.json when it has one; DBRX falls back to cl100k."""
    if (path / "tokenizer.json").is_file():
        return None
    return "cl100k_base" if family == "dbrx" else None


def register(
    session: Session, workspace_id: str, creator: str, name: str, version: str, source: str
) -> RegisteredModel:
    """Validate the checkpoint directory and store it (flushes; the caller commits)."""
    if any(model.name == name for model in builtin_models()):
        raise AlreadyExists(f"{name!r} is a built-in model; register under another name")
    path = Path(source).expanduser()
    if not path.is_dir():
        raise InvalidParameter(f"source {source!r} is not a directory readable by the server")
    try:
        args = verify_checkpoint(path)
    except CheckpointError as exc:
        raise InvalidParameter(f"source {source!r} is not a servable checkpoint: {exc}") from None
    if _tokenizer_for(path, args.family) is None and not (path / "tokenizer.json").is_file():
        raise InvalidParameter(
            f"source {source!r} has no tokenizer.json; a {args.family} checkpoint needs one"
        )
    record = RegisteredModel(
        workspace_id=workspace_id,
        name=name,
        version=version,
        source=str(path.resolve()),
        model_type=args.family,
        creator=creator,
        created_at=utcnow(),
    )
    session.add(record)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise AlreadyExists(f"model {name!r} version {version!r} is already registered") from None
    return record


def public_record(record: RegisteredModel) -> ModelPublic:
    return ModelPublic(
        name=record.name,
        version=record.version,
        model_type=record.model_type,
        source=record.source,
        builtin=False,
        creator=record.creator,
        creation_timestamp=to_millis(record.created_at),
    )


def list_models(session: Session, workspace_id: str) -> ModelList:
    records = session.scalars(
        select(RegisteredModel)
        .where(RegisteredModel.workspace_id == workspace_id)
        .order_by(RegisteredModel.name, RegisteredModel.version)
    ).all()
    return ModelList(
        models=[m.public() for m in builtin_models()] + [public_record(r) for r in records]
    )
