"""The model registry: built-in presets (version "1") and registered Hugging Face
checkpoint directories, per workspace. Served entities name models by
`entity_name` / `entity_version`; `resolve` turns that into a `ModelSource` for workers.

A checkpoint source is caller input naming a path on the server, so it is confined: it must
resolve (symlinks and `..` followed) to a directory under one of the operator's model roots
(`Settings.model_roots`), and a directory some workspace registered belongs to it, with
everything below it; other workspaces may use it only once an account admin has shared it.
Every refusal of a path gives the same message, `UNUSABLE_SOURCE`, so an answer never tells
whether a path exists or who registered it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.db.models import ModelSource as ModelSourceRow
from control_plane.db.models import ModelSourceShare, RegisteredModel, Workspace
from control_plane.errors import AlreadyExists, Conflict, InvalidParameter, NotFound
from control_plane.ids import to_millis, utcnow
from control_plane.settings import SystemModel
from workers.model.args import Family
from workers.model.checkpoint import verify_checkpoint
from workers.model.hf_config import CheckpointError
from workers.model.presets import PRESETS
from workers.model.source import ModelSource

PRESET_VERSION = "1"
UNUSABLE_SOURCE = (
    "source must be a checkpoint directory under the server's model roots that this "
    "workspace may use"
)


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


class ModelSourcePublic(BaseModel):
    """A registered checkpoint directory, its owner, and the workspaces it is shared with."""

    source: str = Field(description="the directory, symlinks and '..' resolved")
    owner_workspace_id: str = Field(description="the workspace that registered it first")
    shared_with: list[str] = Field(description="workspace ids that may register it too")


class ModelSourceList(BaseModel):
    sources: list[ModelSourcePublic]


SystemModels = Mapping[str, SystemModel]


def builtin_models(system_models: SystemModels) -> list[ResolvedModel]:
    """Presets with weights of their own (the real-shape presets need a checkpoint), then
    the Databricks system model names the installation maps (`Settings.system_models`)."""
    presets = [
        ResolvedModel(name, PRESET_VERSION, spec.args.family, ModelSource(preset=name), True)
        for name, spec in PRESETS.items()
        if spec.random_weights
    ]
    return presets + [_system_model(name, target) for name, target in system_models.items()]


def _system_model(name: str, target: SystemModel) -> ResolvedModel:
    if target.preset is not None:
        family = PRESETS[target.preset].args.family
        return ResolvedModel(name, target.version, family, ModelSource(preset=target.preset), True)
    path = Path(str(target.checkpoint))
    try:
        family = verified_family(path)
    except Exception as exc:  # the operator's directory: its problem may be named
        raise InvalidParameter(
            f"model {name!r} cannot be served: its checkpoint (settings system_models) is not "
            f"servable: {exc}"
        ) from None
    source = ModelSource(checkpoint=str(path), tokenizer=_tokenizer_for(path, family))
    return ResolvedModel(name, target.version, family, source, True)


def resolve(
    session: Session,
    workspace_id: str | None,
    name: str,
    version: str,
    *,
    system_models: SystemModels,
) -> ResolvedModel:
    target = system_models.get(name)
    if target is not None:
        if version != target.version:
            raise InvalidParameter(
                f"model {name!r} is served here at version {target.version!r} only, not {version!r}"
            )
        return _system_model(name, target)
    for model in builtin_models({}):
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
    if (record is None or workspace_id is None) and name.startswith("system."):
        offered = ", ".join(f"{n} (version {t.version})" for n, t in system_models.items())
        raise InvalidParameter(
            f"system model {name!r} is not served on this installation; it serves "
            f"{offered or 'no system models'} (an operator maps more with the system_models "
            "setting); GET /api/2.0/models lists every model you can serve"
        )
    if record is None or workspace_id is None:
        raise InvalidParameter(
            f"model {name!r} version {version!r} is not registered in this workspace; "
            "GET /api/2.0/models lists the models you can serve, "
            "POST /api/2.0/models registers a checkpoint"
        )
    if not _access(session, workspace_id, Path(record.source)).usable:
        raise InvalidParameter(
            f"model {name!r} version {version!r} cannot be served: its checkpoint directory "
            "belongs to another workspace and is not shared with this one (an account admin "
            "shares it: PATCH /api/2.0/models/sources)"
        )
    source = ModelSource(
        checkpoint=record.source, tokenizer=_tokenizer_for(Path(record.source), record.model_type)
    )
    return ResolvedModel(record.name, record.version, record.model_type, source, False)


def verified_family(path: Path) -> Family:
    """The family of the servable checkpoint at `path` (`verify_checkpoint`'s checks), read
    once per state of its files: every model listing and resolution names the system models,
    and reading safetensors headers each time would cost far more than listing a directory.
    A file added, removed, rewritten or resized is checked again; a failure is never kept."""
    files = sorted(p for p in path.iterdir() if p.is_file())
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    return _family_of(str(path), stamp)


@functools.lru_cache(maxsize=64)
def _family_of(path: str, stamp: tuple[tuple[str, int, int], ...]) -> Family:
    return verify_checkpoint(Path(path)).family


def _tokenizer_for(path: Path, family: str) -> str | None:
    """The checkpoint's own tokenizer.json when it has one; DBRX falls back to cl100k."""
    if (path / "tokenizer.json").is_file():
        return None
    return "cl100k_base" if family == "dbrx" else None


def source_key(path: str) -> str:
    """`model_sources`' key: the SHA-256 of the resolved path."""
    return hashlib.sha256(path.encode()).hexdigest()


@dataclass(frozen=True)
class _Access:
    usable: bool  # every registered directory at, above or below it is ours or shared with us
    owned: bool  # a registered directory at or above it already has an owner


def _access(session: Session, workspace_id: str, path: Path) -> _Access:
    """What `workspace_id` may do with `path` (an absolute, resolved path), in one query."""
    at_or_above = [source_key(str(p)) for p in (path, *path.parents)]
    below = str(path).rstrip("/") + "/"
    rows = session.execute(
        select(ModelSourceRow.path, ModelSourceRow.workspace_id, ModelSourceShare.workspace_id)
        .outerjoin(
            ModelSourceShare,
            and_(
                ModelSourceShare.path_key == ModelSourceRow.path_key,
                ModelSourceShare.workspace_id == workspace_id,
            ),
        )
        .where(
            or_(
                ModelSourceRow.path_key.in_(at_or_above),
                # SQLite's LIKE ignores ASCII case: a superset, narrowed below.
                ModelSourceRow.path.startswith(below, autoescape=True),
            )
        )
    ).all()
    usable, owned = True, False
    for registered, owner, shared in rows:
        other = Path(registered)
        if path.is_relative_to(other):
            owned = True
        elif not other.is_relative_to(path):
            continue
        if owner != workspace_id and shared is None:
            usable = False
    return _Access(usable=usable, owned=owned)


def _resolved_roots(roots: Sequence[Path]) -> list[Path]:
    resolved = []
    for root in roots:
        try:
            resolved.append(Path(root).resolve())
        except (OSError, RuntimeError, ValueError):
            continue
    return resolved


def usable_directory(
    session: Session, workspace_id: str, source: str, roots: Sequence[Path]
) -> tuple[Path, bool]:
    """The resolved checkpoint directory `source` names, and whether a registered directory
    at or above it already has an owner; `InvalidParameter(UNUSABLE_SOURCE)` for anything
    else: a relative, missing or non-directory path, one that resolves outside every model
    root, or one another workspace owns and has not shared with this one. The ownership
    query runs for every path, existing or not, so the time taken tells nothing either."""
    unusable = InvalidParameter(UNUSABLE_SOURCE)
    if not Path(source).is_absolute():
        raise unusable
    try:
        candidate = Path(source).resolve()  # as far as the path exists
    except (OSError, RuntimeError, ValueError):
        raise unusable from None
    access = _access(session, workspace_id, candidate)
    inside = any(candidate.is_relative_to(root) for root in _resolved_roots(roots))
    try:
        found = Path(source).resolve(strict=True)
        is_dir = found.is_dir()
    except (OSError, RuntimeError, ValueError):
        raise unusable from None
    if not (inside and access.usable and is_dir and found == candidate):
        raise unusable
    return found, access.owned


def register(
    session: Session,
    workspace_id: str,
    creator: str,
    name: str,
    version: str,
    source: str,
    roots: Sequence[Path],
    system_models: SystemModels,
) -> RegisteredModel:
    """Validate the checkpoint directory and store it (flushes; the caller commits). The
    first workspace to register a directory becomes its owner."""
    if any(model.name == name for model in builtin_models({})) or name in system_models:
        raise AlreadyExists(f"{name!r} is a built-in model; register under another name")
    path, owned = usable_directory(session, workspace_id, source, roots)
    # From here on the directory is this workspace's to use: its problems may be named.
    try:
        args = verify_checkpoint(path)
    except CheckpointError as exc:
        raise InvalidParameter(f"source {source!r} is not a servable checkpoint: {exc}") from None
    except Exception as exc:  # unreadable files, malformed JSON or safetensors headers
        raise InvalidParameter(
            f"source {source!r} is not a servable checkpoint: its files could not be read "
            f"({type(exc).__name__})"
        ) from None
    if _tokenizer_for(path, args.family) is None and not (path / "tokenizer.json").is_file():
        raise InvalidParameter(
            f"source {source!r} has no tokenizer.json; a {args.family} checkpoint needs one"
        )
    now = utcnow()
    if not owned:
        session.add(
            ModelSourceRow(
                path_key=source_key(str(path)),
                path=str(path),
                workspace_id=workspace_id,
                created_at=now,
            )
        )
    record = RegisteredModel(
        workspace_id=workspace_id,
        name=name,
        version=version,
        source=str(path),
        model_type=args.family,
        creator=creator,
        created_at=now,
    )
    session.add(record)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        taken = session.scalars(
            select(RegisteredModel.id).where(
                RegisteredModel.workspace_id == workspace_id,
                RegisteredModel.name == name,
                RegisteredModel.version == version,
            )
        ).first()
        if taken is not None:
            raise AlreadyExists(
                f"model {name!r} version {version!r} is already registered"
            ) from None
        # Another registration of the directory won the race to own it.
        raise InvalidParameter(UNUSABLE_SOURCE) from None
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


def list_models(session: Session, workspace_id: str, system_models: SystemModels) -> ModelList:
    records = session.scalars(
        select(RegisteredModel)
        .where(RegisteredModel.workspace_id == workspace_id)
        .order_by(RegisteredModel.name, RegisteredModel.version)
    ).all()
    return ModelList(
        models=[m.public() for m in builtin_models({})]
        + [_system_public(name, target) for name, target in system_models.items()]
        + [public_record(r) for r in records]
    )


def _system_public(name: str, target: SystemModel) -> ModelPublic:
    """A system model as listed; an operator's checkpoint path is not shown to tenants."""
    try:
        family = _system_model(name, target).family
    except InvalidParameter:  # an operator's directory that is not servable (yet)
        family = "unavailable"
    return ModelPublic(
        name=name,
        version=target.version,
        model_type=family,
        source=f"preset:{target.preset}" if target.preset is not None else "system checkpoint",
        builtin=True,
    )


def _source_view(session: Session, row: ModelSourceRow) -> ModelSourcePublic:
    shared = session.scalars(
        select(ModelSourceShare.workspace_id)
        .where(ModelSourceShare.path_key == row.path_key)
        .order_by(ModelSourceShare.workspace_id)
    ).all()
    return ModelSourcePublic(
        source=row.path, owner_workspace_id=row.workspace_id, shared_with=list(shared)
    )


def list_sources(session: Session, account_id: str) -> ModelSourceList:
    """Every registered directory owned by a workspace of the account."""
    rows = session.scalars(
        select(ModelSourceRow)
        .join(Workspace, Workspace.id == ModelSourceRow.workspace_id)
        .where(Workspace.account_id == account_id)
        .order_by(ModelSourceRow.path)
    ).all()
    return ModelSourceList(sources=[_source_view(session, row) for row in rows])


def _source_in_account(session: Session, account_id: str, source: str) -> ModelSourceRow:
    keys = {source_key(source)}
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        keys.add(source_key(str(Path(source).resolve())))
    row = session.scalars(
        select(ModelSourceRow)
        .join(Workspace, Workspace.id == ModelSourceRow.workspace_id)
        .where(ModelSourceRow.path_key.in_(keys), Workspace.account_id == account_id)
    ).first()
    if row is None:
        raise NotFound("no workspace of this account registered that model source")
    return row


def share_source(
    session: Session, account_id: str, source: str, add: Sequence[str], remove: Sequence[str]
) -> ModelSourcePublic:
    """Share a registered directory with workspaces of its owner's account, or stop sharing
    it (flushes; the caller commits). Registrations already made stay listed, but a served
    entity can no longer be created from them once the share is gone."""
    row = _source_in_account(session, account_id, source)
    if set(add) & set(remove):
        raise InvalidParameter("a workspace cannot be both added and removed")
    named = set(add) | set(remove)
    known = set(
        session.scalars(
            select(Workspace.id).where(Workspace.id.in_(named), Workspace.account_id == account_id)
        ).all()
    )
    missing = sorted(named - known)
    if missing:
        raise NotFound(f"workspace {missing[0]!r} does not exist")
    if remove:
        session.execute(
            delete(ModelSourceShare).where(
                ModelSourceShare.path_key == row.path_key,
                ModelSourceShare.workspace_id.in_(set(remove)),
            )
        )
    current = set(
        session.scalars(
            select(ModelSourceShare.workspace_id).where(ModelSourceShare.path_key == row.path_key)
        ).all()
    )
    now = utcnow()
    session.add_all(
        ModelSourceShare(path_key=row.path_key, workspace_id=workspace_id, created_at=now)
        for workspace_id in sorted(set(add) - current - {row.workspace_id})
    )
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict("the model source's shares changed meanwhile; retry") from None
    return _source_view(session, row)
