"""Service subcommands of ``cites-vision``: ``serve``, ``keys``, ``models``, ``feedback``.

Registered through entry points (see pyproject.toml); heavy imports (FastAPI, SQLAlchemy,
ONNX Runtime) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import CommandError

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy.orm import Session

    from service.settings import Settings

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (SQLite database, images); default $CITES_DATA_DIR or ./var",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL instead of SQLite in the data dir (default $DATABASE_URL)",
    )


def _settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    from service.settings import load_settings

    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise CommandError(f"invalid settings: {problems}") from None


def resolve_bundle(flag: Path | None) -> Path:
    """The bundle to serve: ``--bundle``, else ``$CITES_BUNDLE_DIR``, else ``weights/default``
    in the current directory or, failing that, in the repository."""
    if flag is not None:
        return flag
    env = os.environ.get("CITES_BUNDLE_DIR")
    if env:
        return Path(env)
    local = Path("weights") / "default"
    if local.is_dir():
        return local
    return REPO_ROOT / "weights" / "default"


def _open_db(settings: Settings) -> Session:
    from service.database import (
        make_engine,
        make_sessionmaker,
        migrate,
        private_sqlite_files,
        sqlite_dir,
    )

    os.umask(0o077)  # a data folder and database this command creates are private
    url = settings.resolved_database_url
    folder = sqlite_dir(url)
    if folder is not None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        engine = make_engine(url)
        migrate(engine)
        private_sqlite_files(url)
    except Exception as exc:  # driver errors vary: report any of them as a user error
        raise CommandError(f"cannot open the database {engine_url(url)}: {exc}") from None
    return make_sessionmaker(engine)()


def engine_url(url: str) -> str:
    """A URL safe to print (password hidden)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---- serve -------------------------------------------------------------------------------


def register_serve(subparsers: Subparsers) -> None:
    """``cites-vision serve``."""
    parser = subparsers.add_parser("serve", help="run the identification API and web page")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--bundle", type=Path, default=None, help="bundle folder (default weights/default)"
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="folder of bundle versions to activate (default: the bundle's parent)",
    )
    _add_data_dir(parser)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    # The service's numpy work is tiny (OOD projection, softmax, heat maps); multi-threaded BLAS
    # only spin-waits against the decode and ONNX Runtime threads. Must be set before numpy is
    # imported; an explicit setting in the environment wins.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    os.umask(0o077)  # every file the service creates (data, images, exports) is private
    from service.memory import return_large_buffers

    return_large_buffers()  # before the decode workers start: they inherit the settings
    import uvicorn

    from model.bundle import BundleError, load_bundle
    from service.app import StartupError, create_app

    bundle = resolve_bundle(args.bundle)
    if not (bundle / "manifest.json").is_file():
        raise CommandError(
            f"no model bundle at {bundle} (expected {bundle / 'manifest.json'}). Train one with "
            "`cites-vision train ...`, or pass --bundle DIR / set CITES_BUNDLE_DIR."
        )
    try:
        load_bundle(bundle)  # fail here with a clear message rather than inside the server
    except BundleError as exc:
        raise CommandError(f"the bundle at {bundle} cannot be served: {exc}") from None
    settings = _settings(
        data_dir=args.data_dir,
        bundle_dir=bundle,
        weights_dir=args.weights_dir,
        database_url=args.database_url,
    )
    app = create_app(settings)
    url = f"http://{args.host}:{args.port}"
    data_dir = settings.data_dir
    _out(
        f"CITES Vision: serving {bundle} at {url}  (officer page {url}/ , API docs {url}/docs)\n"
        f"Make an API key:  cites-vision keys create --role officer --name me "
        f"--data-dir {data_dir}\n"
        f"Identify a photo: curl -H 'Authorization: Bearer KEY' -F image=@photo.jpg "
        f"{url}/v1/identifications"
    )
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=10,
            proxy_headers=False,
            **settings.http_limits().uvicorn_options(),
        )
    except StartupError as exc:
        raise CommandError(str(exc)) from None
    return 0


# ---- keys --------------------------------------------------------------------------------


def register_keys(subparsers: Subparsers) -> None:
    """``cites-vision keys create|list|revoke``."""
    parser = subparsers.add_parser("keys", help="manage API keys")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="make a key (printed alone on the last line)")
    create.add_argument("--role", required=True, help="officer, scanner, trainer or admin")
    create.add_argument("--name", required=True, help="who or what uses the key")
    _add_data_dir(create)
    create.set_defaults(func=_keys_create)
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    _add_data_dir(listing)
    listing.set_defaults(func=_keys_list)
    revoke = sub.add_parser("revoke", help="revoke a key (effective at once)")
    revoke.add_argument("key_id", help="the key's id (the 8 hex digits after cv_) or the key")
    _add_data_dir(revoke)
    revoke.set_defaults(func=_keys_revoke)


def _keys_create(args: argparse.Namespace) -> int:
    from service.keys import ApiKeyError, create_key, parse_role

    settings = _settings(data_dir=args.data_dir, database_url=args.database_url)
    try:
        role = parse_role(args.role)
        with _open_db(settings) as session:
            key, info = create_key(session, args.name, role)
    except ApiKeyError as exc:
        raise CommandError(str(exc)) from None
    _out(f"created key {info.id} for {info.name!r} with role {info.role}; store it now:")
    _out(key)
    return 0


def _fmt(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def _keys_list(args: argparse.Namespace) -> int:
    from service.keys import list_keys

    settings = _settings(data_dir=args.data_dir, database_url=args.database_url)
    with _open_db(settings) as session:
        keys = list_keys(session)
    _out(f"{'id':8}  {'role':8}  {'created':16}  {'last used':16}  {'revoked':16}  name")
    for k in keys:
        _out(
            f"{k.id:8}  {k.role:8}  {_fmt(k.created_at):16}  {_fmt(k.last_used_at):16}  "
            f"{_fmt(k.revoked_at):16}  {k.name}"
        )
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from service.keys import ApiKeyError, revoke_key

    settings = _settings(data_dir=args.data_dir, database_url=args.database_url)
    try:
        with _open_db(settings) as session:
            info = revoke_key(session, args.key_id)
    except ApiKeyError as exc:
        raise CommandError(str(exc)) from None
    _out(f"revoked key {info.id} ({info.name})")
    return 0


# ---- models ------------------------------------------------------------------------------


def _add_remote(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--url",
        required=required,
        default=None,
        help="a running service, e.g. http://127.0.0.1:8000 (with --key)",
    )
    parser.add_argument("--key", default=None, help="API key (default $CITES_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer")


def register_models(subparsers: Subparsers) -> None:
    """``cites-vision models list|activate|rollback|history``."""
    parser = subparsers.add_parser(
        "models", help="list bundles; choose, roll back and audit the one served"
    )
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = sub.add_parser(
        "list", help="bundles in the weights directory (or of a running service with --url)"
    )
    listing.add_argument("--weights-dir", type=Path, default=None, help="default: weights/")
    listing.add_argument("--verify", action="store_true", help="check every file's sha256")
    _add_remote(listing)
    listing.set_defaults(func=_models_list)
    activate = sub.add_parser(
        "activate",
        help="serve VERSION: on a running service with --url/--key (admin), else from the "
        "next start",
    )
    activate.add_argument("version")
    activate.add_argument("--weights-dir", type=Path, default=None, help="default: weights/")
    activate.add_argument("--reason", default=None, help="why (recorded in the history)")
    activate.add_argument(
        "--modality",
        choices=("camera", "xray"),
        default=None,
        help="with --url: the modality it serves (default: the bundle's own)",
    )
    _add_data_dir(activate)
    _add_remote(activate)
    activate.set_defaults(func=_models_activate)
    rollback = sub.add_parser(
        "rollback", help="return a running service to the version active before the current one"
    )
    rollback.add_argument("--reason", default=None, help="why (recorded in the history)")
    rollback.add_argument(
        "--modality", choices=("camera", "xray"), default="camera", help="whose model"
    )
    _add_remote(rollback, required=True)
    rollback.set_defaults(func=_models_rollback)
    hist = sub.add_parser("history", help="every activation and rollback of a running service")
    hist.add_argument(
        "--modality", choices=("camera", "xray"), default=None, help="only this modality's"
    )
    _add_remote(hist, required=True)
    hist.set_defaults(func=_models_history)


def _client(args: argparse.Namespace) -> Any:
    from model.service_client import ServiceClient

    key = args.key or os.environ.get("CITES_API_KEY")
    if not key:
        raise CommandError("--url needs --key KEY (or $CITES_API_KEY)")
    return ServiceClient(args.url, key)


def _remote(args: argparse.Namespace, call: Any) -> Any:
    from model.service_client import ServiceError

    try:
        return call(_client(args))
    except ServiceError as exc:
        raise CommandError(str(exc)) from None


def _print_json(payload: Any) -> None:
    import json

    _out(json.dumps(payload, indent=2, sort_keys=True))


def _models_rollback(args: argparse.Namespace) -> int:
    before = _remote(args, lambda c: c.active()).get("by_modality", {}).get(args.modality)
    after = _remote(args, lambda c: c.rollback(args.reason, args.modality))
    if args.json:
        _print_json(after)
    else:
        was = before["version"] if before else "none"
        _out(f"rolled back the {args.modality} model of {args.url}: {was} -> {after['version']}")
    return 0


def _models_history(args: argparse.Namespace) -> int:
    payload = _remote(args, lambda c: c.history(args.modality))
    if args.json:
        _print_json(payload)
        return 0
    _out(f"{'when':20}  {'model':6}  {'action':8}  {'from':24}  {'to':24}  by (reason)")
    for row in payload["items"]:
        reason = f" ({row['reason']})" if row.get("reason") else ""
        _out(
            f"{row['at'][:19]:20}  {row.get('modality', 'camera'):6}  {row['action']:8}  "
            f"{row['from'] or '-':24}  {row['to']:24}  {row['by']}{reason}"
        )
    return 0


def _weights_dir(flag: Path | None) -> Path:
    if flag is not None:
        return flag
    env = os.environ.get("CITES_WEIGHTS_DIR")
    return Path(env) if env else resolve_bundle(None).parent


def _models_list(args: argparse.Namespace) -> int:
    from model.bundle import list_bundles

    if args.url:
        payload = _remote(args, lambda c: c.models())
        if args.json:
            _print_json(payload)
            return 0
        for item in payload["items"]:
            marks = ("ACTIVE " if item["active"] else "") + (
                "" if item["recommended"] else "not-recommended "
            )
            state = "ok" if item["valid"] else f"BROKEN: {item['error']}"
            _out(
                f"{item['folder']:24}  {item['version']:32}  {item['created_at'] or '-':25}  "
                f"{marks}{state}"
            )
        return 0

    weights = _weights_dir(args.weights_dir)
    summaries = list_bundles(weights, verify=args.verify)
    if not summaries:
        _out(f"no bundles under {weights}")
        return 0
    for s in summaries:
        state = "ok" if s.error is None else f"BROKEN: {s.error}"
        _out(f"{s.path.name:24}  {s.version:32}  {s.created_at or '-':25}  {state}")
    return 0


def _models_activate(args: argparse.Namespace) -> int:
    from model.bundle import BundleError, load_bundle
    from service.modelhost import ModelHost
    from service.repository import active_model_key, set_state

    if args.url:
        before = _remote(args, lambda c: c.active())
        after = _remote(args, lambda c: c.activate(args.version, args.reason, args.modality))
        if args.json:
            _print_json(after)
        else:
            _out(f"{args.url} now serves {after['version']} (was {before['version']})")
        return 0
    weights = _weights_dir(args.weights_dir)
    settings = _settings(data_dir=args.data_dir, database_url=args.database_url)
    try:
        folder = ModelHost.find_in(weights, args.version)
        bundle = load_bundle(folder)
    except (LookupError, BundleError) as exc:
        raise CommandError(str(exc)) from None
    modalities = list(bundle.manifest.modalities)
    with _open_db(settings) as session:
        for modality in modalities:
            set_state(session, active_model_key(modality), folder.name)
    _out(
        f"model {bundle.version} ({folder}) will be served for {' and '.join(modalities)} images "
        f"from the next start; a running service switches with "
        f"POST /v1/models/{bundle.version}/activate"
    )
    return 0


# ---- feedback ----------------------------------------------------------------------------


def register_feedback(subparsers: Subparsers) -> None:
    """``cites-vision feedback export|conflicts|resolve``."""
    parser = subparsers.add_parser("feedback", help="officers' feedback")
    sub = parser.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="write confirmed labels + images as a tar.gz")
    _add_data_dir(export)
    export.add_argument("--out", type=Path, required=True, help="archive to write (.tar.gz)")
    export.add_argument("--since", default=None, help="only feedback from this ISO time")
    export.set_defaults(func=_feedback_export)
    conflicts = sub.add_parser(
        "conflicts", help="images officers disagree on (kept out of exports until resolved)"
    )
    _add_data_dir(conflicts)
    conflicts.set_defaults(func=_feedback_conflicts)
    resolve = sub.add_parser("resolve", help="settle a conflict: the image's label for training")
    resolve.add_argument("sha256", help="the image's sha256 (from `feedback conflicts`)")
    resolve.add_argument("--label", required=True, help="the label (or taxon id) it gets")
    resolve.add_argument("--by", default=None, help="who resolves it (default: $USER)")
    resolve.add_argument("--note", default=None, help="why")
    _add_data_dir(resolve)
    resolve.set_defaults(func=_feedback_resolve)


def _feedback_export(args: argparse.Namespace) -> int:
    from service.export import write_export
    from service.imagestore import ImageStore

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise CommandError(f"--since {args.since!r} is not an ISO time") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    settings = _settings(data_dir=args.data_dir, database_url=args.database_url)
    if not settings.data_dir.is_dir():
        raise CommandError(f"no data directory at {settings.data_dir}")
    with _open_db(settings) as session:
        summary = write_export(session, ImageStore(settings.images_dir), args.out, since=since)
    _out(
        f"wrote {summary.rows} labelled images ({summary.skipped} skipped, {summary.conflicts} "
        f"held back by conflicts: see conflicts.csv) to {summary.path}"
    )
    return 0


def _feedback_conflicts(args: argparse.Namespace) -> int:
    from service.export import find_conflicts

    settings = _settings(data_dir=args.data_dir, database_url=args.database_url)
    with _open_db(settings) as session:
        conflicts = find_conflicts(session)
    if not conflicts:
        _out("no conflicts")
        return 0
    for conflict in conflicts:
        votes = "; ".join(
            f"{label}: {', '.join(names)}" for label, names in sorted(conflict.labels.items())
        )
        _out(f"{conflict.sha256}  {votes}")
    return 0


def _feedback_resolve(args: argparse.Namespace) -> int:
    import getpass

    from service.export import resolve_conflict

    label = args.label.strip()
    if not label:
        raise CommandError("--label must not be empty")
    settings = _settings(data_dir=args.data_dir, database_url=args.database_url)
    try:
        with _open_db(settings) as session:
            resolve_conflict(
                session,
                args.sha256,
                label,
                by_key=None,
                by_name=args.by or getpass.getuser(),
                note=args.note,
            )
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    _out(f"resolved {args.sha256}: label {label}; it joins the next export")
    return 0
