"""The `helix` command: accounts and tokens for admins, the one-machine launcher, the runner.

Subcommands import what they need when they run, so `helix runner` works on a runner-only
install (no Flask, no psycopg) and account commands never load the runner.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from shared.settings import env_int

STATE_DIR = Path(os.environ.get("HELIX_STATE_DIR", ".helix"))


def _load_state_env() -> None:
    """Commands run beside `helix up` find its embedded servers through .helix/env."""
    env_file = STATE_DIR / "env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key and value:
                os.environ.setdefault(key, value)


def _connect():
    import psycopg
    from psycopg.rows import dict_row

    from controlplane.storage.migrate import apply_migrations

    _load_state_env()
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("DATABASE_URL is not set and no .helix/env was found: start `helix up` first")
    apply_migrations(url)
    return psycopg.connect(url, row_factory=dict_row)


def _password(args) -> str:
    """--password PW, or --password - to read it from the first line of standard input (a
    password on the command line is visible to other users of the machine in `ps`)."""
    from controlplane.accounts import store as accounts

    password = sys.stdin.readline().rstrip("\n") if args.password == "-" else (args.password or "")
    if password and (problem := accounts.password_problem(password)):
        sys.exit(problem)
    return password


def _known_plan(conn, plan: str | None) -> None:
    from controlplane.usage import plans

    if plan is not None and not any(p["name"] == plan for p in plans.list_plans(conn)):
        sys.exit(f"no plan {plan!r}: create it with `helix plans set {plan} ...` (see `helix plans list`)")


def cmd_users_create(args) -> None:
    from controlplane.accounts import store as accounts
    from controlplane.usage.plans import DEFAULT_PLAN

    password = _password(args)
    with _connect() as conn:
        if accounts.get_user_by_email(conn, args.email):
            sys.exit(f"a user {args.email} already exists: use `helix keys create --email {args.email}`"
                     f" or `helix users password {args.email} --password ...`")
        _known_plan(conn, args.plan)
        user = accounts.create_user(conn, args.email, is_admin=args.admin, password=password,
                                    plan=args.plan or DEFAULT_PLAN)
        _, key = accounts.create_api_key(conn, user["id"], args.key_name)
    print(f"created user {user['email']} ({user['id']}){' as admin' if args.admin else ''}"
          f" on plan {args.plan or DEFAULT_PLAN}{'; they can sign in to the web app' if password else ''}")
    print(key)


def cmd_users_delete(args) -> None:
    """Deletes a user for good and says what went; waits for live runners to delete the user's
    adapters from their disks."""
    from redis import Redis

    from controlplane.config import Config
    from controlplane.erasure.users import ADAPTERS, erase_user
    from controlplane.fleet import forgotten_adapters
    from controlplane.fleet.dispatch import Dispatcher
    from controlplane.storage.filestore import from_config

    with _connect() as conn:
        config = Config.from_env()
        user = conn.execute("SELECT id, email FROM users WHERE email = %s OR id::text = %s",
                            (args.user, args.user)).fetchone()
        conn.commit()
        if user is None and not _uuid(args.user):
            sys.exit(f"no user {args.user!r}: `helix usage` lists users by email")
        if user is not None and not args.yes:
            answer = input(f"Delete {user['email']} and everything of theirs, for good? Type their email: ")
            if answer.strip() != user["email"]:
                sys.exit("not deleted")
        redis = Redis.from_url(config.redis_url)
        erased = erase_user(conn, redis, Dispatcher(redis, config), from_config(config.filestore, config.s3_endpoint_url),
                            str(user["id"]) if user else args.user,
                            keep_usage_anonymised=config.deleted_user_usage == "anonymise")
        print("\n".join(erased.lines()))
        if erased.removed.get(ADAPTERS):
            _wait_for_runners(conn, forgotten_adapters.latest(conn), config.runner_gone_seconds, args.wait)
    if erased.problems:
        sys.exit(1)


def _uuid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
        return True
    except ValueError:
        return False


def _wait_for_runners(conn, seq: int, live_seconds: float, wait: float) -> None:
    from controlplane.fleet import forgotten_adapters

    deadline = time.monotonic() + wait
    while True:
        behind = forgotten_adapters.runners_behind(conn, seq, live_seconds)
        conn.commit()
        if not behind:
            print("  every live runner has deleted the adapters from its disk")
            return
        if time.monotonic() > deadline:
            print(f"  runners that have not yet deleted the adapters: {', '.join(behind)}"
                  " (each does when it next reports, and one that is away when it comes back)")
            return
        time.sleep(0.5)


def cmd_users_plan(args) -> None:
    from controlplane.usage import plans

    with _connect() as conn:
        try:
            plans.set_user_plan(conn, args.email, args.plan)
        except plans.PlanError as err:
            sys.exit(str(err))
    print(f"{args.email} is on plan {args.plan} (every replica applies it within seconds)")


def cmd_keys_plan(args) -> None:
    from controlplane.usage import plans

    plan = None if args.plan == "-" else args.plan
    with _connect() as conn:
        try:
            plans.set_key_plan(conn, args.key_id, plan)
        except plans.PlanError as err:
            sys.exit(str(err))
    print(f"API key {args.key_id} is on plan {plan} besides its user's" if plan else
          f"API key {args.key_id} is held to its user's plan alone")


def _limit(text: str) -> int:
    """A limit on the command line: a whole number, 0 for unlimited."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (0: unlimited), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (unlimited) or more, got {value}")
    return value


def cmd_plans_set(args) -> None:
    from controlplane.usage import plans

    limits = plans.Limits(**{name: getattr(args, name) or None for name in plans.LIMIT_NAMES})
    with _connect() as conn:
        try:
            created = plans.set_plan(conn, args.name, limits)
        except plans.PlanError as err:
            sys.exit(str(err))
    print(f"{'created' if created else 'replaced'} plan {args.name}: {_limits_text(limits)}")


def _limits_text(limits) -> str:
    stored = limits.stored()
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in stored.items()) or "no limits"


def cmd_plans_list(args) -> None:
    from controlplane.usage import plans

    with _connect() as conn:
        rows = plans.list_plans(conn)
    for p in rows:
        print(f"{p['name']}  users {p['users']}  keys {p['keys']}  {_limits_text(p['limits'])}")


def cmd_users_password(args) -> None:
    from controlplane.accounts import store as accounts

    password = _password(args)
    if not password:
        sys.exit("give the new password: --password PW (or --password - to read it from standard input)")
    with _connect() as conn:
        user = accounts.get_user_by_email(conn, args.email)
        if user is None:
            sys.exit(f"no user {args.email}: create one with `helix users create {args.email} --password ...`")
        accounts.set_password(conn, user["id"], password)
    print(f"password set for {args.email}; browsers signed in as them were signed out")


def cmd_keys_create(args) -> None:
    from controlplane.accounts import store as accounts

    with _connect() as conn:
        user = accounts.get_user_by_email(conn, args.email)
        if user is None:
            sys.exit(f"no user {args.email}: create one with `helix users create {args.email}`")
        _known_plan(conn, args.plan)
        _, key = accounts.create_api_key(conn, user["id"], args.name, plan=args.plan)
    print(key)


def cmd_runner_token(args) -> None:
    from controlplane.accounts import store as accounts

    with _connect() as conn:
        if accounts.live_runner_token_named(conn, args.name):
            sys.exit(f"a runner token named {args.name!r} exists: pick another name, or revoke it first"
                     f" (`helix runners revoke {args.name}`)")
        _, token = accounts.create_runner_token(conn, args.name)
    print(token)


def _when(value) -> str:
    from datetime import timezone

    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if value else "never"


def cmd_runner_tokens(args) -> None:
    from controlplane.accounts import store as accounts

    with _connect() as conn:
        rows = accounts.list_runner_tokens(conn)
    if not rows:
        print("no runner token yet: create one with `helix runners token NAME`")
    for t in rows:
        status = f"revoked {_when(t['revoked'])}" if t["revoked"] else "live"
        print(f"{t['name']}  id {t['id']}  created {_when(t['created'])}  runners {t['runners']}"
              f"  last seen {_when(t['last_seen'])}  {status}")


def cmd_runner_revoke(args) -> None:
    from controlplane.accounts import store as accounts

    with _connect() as conn:
        revoked = accounts.revoke_runner_tokens(conn, args.name)
    if not revoked:
        sys.exit(f"no live runner token named (or with id) {args.name!r}: see `helix runners tokens`")
    for t in revoked:
        print(f"revoked runner token {t['name']!r} ({t['id']}): its runners' requests are refused from now on")


def _memory(state: dict) -> str:
    parts = []
    host = state.get("memory", {}).get("host")
    if host and "free_bytes" in host:
        parts.append(f"host {host['free_bytes'] / 2**30:.1f}/{host.get('total_bytes', 0) / 2**30:.1f} GiB free")
    for gpu in state.get("memory", {}).get("gpu", []):
        parts.append(f"gpu{gpu.get('index', '')} {gpu.get('free_bytes', 0) / 2**30:.1f}/"
                     f"{gpu.get('total_bytes', 0) / 2**30:.1f} GiB free")
    return ", ".join(parts)


def cmd_runners_list(args) -> None:
    from controlplane.config import Config
    from controlplane.fleet import store as fleet_store

    gone_seconds = Config.from_env().runner_gone_seconds
    with _connect() as conn:
        rows = fleet_store.runners_with_tokens(conn, gone_seconds)
    if not rows:
        print("no runner has registered yet")
    for r in rows:
        models = ", ".join(f"{kind}: {' '.join(names)}" for kind, names in r.models.items() if names)
        jobs = " ".join(f"{kind}={n}" for kind, n in r.state.get("jobs", {}).items() if n)
        extra = "  ".join(x for x in (_memory(r.state), f"jobs {jobs}" if jobs else "",
                                      f"version {r.state['version']}" if r.state.get("version") else "") if x)
        print(f"{r.id}  {'gone' if r.gone else 'alive'}  last seen {int(r.seconds_since_seen)}s ago"
              f"  token {r.token!r}{' (revoked)' if r.token_revoked else ''}  {models}"
              + (f"  {extra}" if extra else ""))


def cmd_usage(args) -> None:
    """One user's usage (--email), or everyone's by user; by day, model, key or user."""
    from controlplane.accounts import store as accounts
    from controlplane.errors import BadRequest
    from controlplane.usage import metering

    group_by = args.group_by or ("day" if args.email else "user")
    try:
        start, end = metering.period(args.start, args.end)
    except BadRequest as err:
        sys.exit(err.message.replace("'from'", "--from").replace("'to'", "--to"))
    with _connect() as conn:
        owner = None
        if args.email:
            user = accounts.get_user_by_email(conn, args.email)
            if user is None:
                sys.exit(f"no user {args.email}: see `helix users create`")
            owner = user["id"]
        groups = metering.summary(conn, owner, start, end, group_by)
        if group_by == "user":
            emails = {r["id"]: r["email"] for r in conn.execute("SELECT id, email FROM users WHERE id = ANY(%s)",
                                                               ([g["user"] for g in groups],))}
            groups = [{**g, "user": emails.get(g["user"], g["user"])} for g in groups]
    print(f"usage {'of ' + args.email if args.email else 'of every user'} from {start:%Y-%m-%d %H:%M} to"
          f" {end:%Y-%m-%d %H:%M} UTC, by {group_by}")
    columns = (group_by, "jobs", "prompt_tokens", "completion_tokens", "images", "runner_seconds", "training_tokens",
               "stored_bytes")
    rows = [columns] + [tuple(str(g[c]) for c in columns) for g in groups]
    rows.append(("total",) + tuple(str(metering.totals(groups)[c]) for c in columns[1:]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    for r in rows:
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(r, widths))))


def _store_and_database():
    """The installation's database URL (migrated) and filestore, as its control plane has them."""
    from controlplane.config import Config
    from controlplane.storage.filestore import from_config

    _connect().close()  # finds .helix/env and brings the schema up to this release's
    config = Config.from_env()
    return os.environ["DATABASE_URL"], from_config(config.filestore, config.s3_endpoint_url)


def cmd_backup(args) -> None:
    from controlplane.backups import backup
    from controlplane.backups.database import BackupRefused

    database_url, store = _store_and_database()
    try:
        manifest = backup.make(database_url, store, Path(args.folder))
    except BackupRefused as err:
        sys.exit(str(err))
    tables = manifest["database"]["rows"]
    print(f"backed up {args.folder} as of {manifest['database']['began']} in {manifest['seconds']}s:"
          f" {sum(tables.values())} rows in {len(tables)} tables ({tables.get('sessions', 0)} sessions,"
          f" {tables.get('interactions', 0)} interactions), {manifest['files']['files']} files"
          f" ({manifest['files']['bytes']} bytes)")


def cmd_restore(args) -> None:
    from controlplane.backups import backup
    from controlplane.backups.database import BackupRefused

    database_url, store = _store_and_database()
    try:
        restored = backup.restore(database_url, store, Path(args.folder), force=args.force)
    except BackupRefused as err:
        sys.exit(str(err))
    rows = restored["rows"]
    print(f"restored {args.folder} (as of {restored['began']}): {sum(rows.values())} rows"
          f" ({rows.get('users', 0)} users, {rows.get('sessions', 0)} sessions, {rows.get('interactions', 0)}"
          f" interactions), {restored['files']} files. Unfinished work is queued again by the control plane;"
          " users sign in and call with their keys from the backup")


def cmd_migrate(args) -> None:
    with _connect():
        pass
    print("database is up to date")


def cmd_up(args) -> None:
    from controlplane.devstack.stack import run_stack

    run_stack(STATE_DIR, port=args.port, with_runner=not args.no_runner)


def cmd_serve(args) -> None:
    """The control plane alone on external PostgreSQL and Redis/Valkey, what a container or a
    service manager runs: migrations first (a database that is unreachable or refuses them stops
    here with one line), then gunicorn in place of this process, so signals reach it directly."""
    from controlplane.http.serving import ACCESS_LOG_FORMAT, gunicorn_command
    from controlplane.storage.migrate import apply_migrations

    missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(name)]
    if missing:
        sys.exit(f"`helix serve` needs {' and '.join(missing)} (`helix up` runs embedded servers instead)")
    apply_migrations(os.environ["DATABASE_URL"])
    cmd = gunicorn_command(args.port, workers=args.workers, host=args.host,
                           extra=["--access-logfile", "-", "--access-logformat", ACCESS_LOG_FORMAT])
    os.execv(cmd[0], cmd)


def cmd_runner(args) -> None:
    os.execvp(sys.executable, [sys.executable, "-m", "runner", *args.runner_args])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="helix", description="Helix-compatible GenAI platform")
    sub = p.add_subparsers(dest="command", required=True)

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    uc = users.add_parser("create", help="create a user; prints its API key as the last line")
    uc.add_argument("email")
    uc.add_argument("--admin", action="store_true")
    uc.add_argument("--key-name", default="default")
    uc.add_argument("--password", help="a password for the web app (at least 8 characters; '-': read from stdin)")
    uc.add_argument("--plan", help="the user's plan (default: default); see `helix plans list`")
    uc.set_defaults(func=cmd_users_create)
    upl = users.add_parser("plan", help="put a user on a plan")
    upl.add_argument("email")
    upl.add_argument("plan")
    upl.set_defaults(func=cmd_users_plan)
    ud = users.add_parser("delete", help="delete a user for good: sessions, files, adapters on every runner's disk,"
                          " keys, sign-ins and usage (HELIX_DELETED_USER_USAGE=anonymise keeps usage, anonymised)")
    ud.add_argument("user", help="their email, or their id (to finish a deletion that stopped half-way)")
    ud.add_argument("--yes", action="store_true", help="do not ask for the email again")
    ud.add_argument("--wait", type=float, default=30, metavar="SECONDS",
                    help="how long to wait for live runners to delete the adapters (default 30)")
    ud.set_defaults(func=cmd_users_delete)
    up_ = users.add_parser("password", help="set a user's web-app password (signs their browsers out)")
    up_.add_argument("email")
    up_.add_argument("--password", required=True, help="the new password ('-': read from stdin)")
    up_.set_defaults(func=cmd_users_password)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    kc = keys.add_parser("create", help="create another API key for a user; prints it")
    kc.add_argument("--email", required=True)
    kc.add_argument("--name", default="cli")
    kc.add_argument("--plan", help="a plan of the key's own, limiting it besides its user's plan")
    kc.set_defaults(func=cmd_keys_create)
    kp = keys.add_parser("plan", help="put an API key (by its id) on a plan of its own, besides its user's ('-': none)")
    kp.add_argument("key_id")
    kp.add_argument("plan")
    kp.set_defaults(func=cmd_keys_plan)

    plans = sub.add_parser("plans", help="plans: named sets of limits").add_subparsers(dest="action", required=True)
    ps = plans.add_parser("set", help="create a plan or replace its limits (a limit not given, or 0, is unlimited)")
    ps.add_argument("name")
    from controlplane.usage.plans import Limits  # pydantic only: loads on a runner-only install too

    for name, limit in Limits.model_fields.items():
        ps.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_limit, default=0, metavar="N",
                        help=limit.description)
    ps.set_defaults(func=cmd_plans_set)
    plans.add_parser("list", help="plans, their limits and how many users and keys are on each").set_defaults(
        func=cmd_plans_list)

    runners = sub.add_parser("runners", help="manage runner tokens").add_subparsers(dest="action", required=True)
    rt = runners.add_parser("token", help="create a runner token; prints it")
    rt.add_argument("name")
    rt.set_defaults(func=cmd_runner_token)
    runners.add_parser("list", help="runners that registered, most recently seen first: alive or gone"
                       " (not heard from for HELIX_RUNNER_GONE_SECONDS), memory, jobs").set_defaults(func=cmd_runners_list)
    runners.add_parser("tokens", help="runner tokens: name, id, created, runners registered, last seen").set_defaults(
        func=cmd_runner_tokens)
    rr = runners.add_parser("revoke", help="revoke the runner token with this name (or id): refused at once")
    rr.add_argument("name")
    rr.set_defaults(func=cmd_runner_revoke)

    usage = sub.add_parser("usage", help="what finished work used: one user's (--email), or every user's by user")
    usage.add_argument("--email")
    usage.add_argument("--from", dest="start", help="a date (2026-12-01) or ISO time; default: 30 days ago")
    usage.add_argument("--to", dest="end", help="a date or ISO time; default: now")
    usage.add_argument("--group-by", choices=("day", "model", "key", "user"))
    usage.add_argument("--mine", action="store_true",
                       help="your own usage, through the API (the key of `helix login` or HELIX_API_KEY)")
    usage.add_argument("--json", action="store_true", help="with --mine: the API's answer as JSON")
    usage.set_defaults(func=cmd_usage)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    bk = sub.add_parser("backup", help="write a consistent backup of the database and the filestore into a new"
                        " folder, while the platform runs")
    bk.add_argument("folder")
    bk.set_defaults(func=cmd_backup)
    rs = sub.add_parser("restore", help="bring a fresh installation (set up, running, nothing created) back to a backup")
    rs.add_argument("folder")
    rs.add_argument("--force", action="store_true", help="replace what the installation holds already")
    rs.set_defaults(func=cmd_restore)

    up = sub.add_parser("up", help="run the whole platform on this machine (what `make run` does)")
    up.add_argument("--port", type=int, default=env_int(os.environ, "HELIX_PORT", 8080))
    up.add_argument("--no-runner", action="store_true", help="start the control plane only")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="serve the control plane alone on DATABASE_URL and REDIS_URL"
                           " (what the container runs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=env_int(os.environ, "HELIX_PORT", 8080))
    serve.add_argument("--workers", type=int, default=env_int(os.environ, "HELIX_WEB_WORKERS", 2),
                       help="gunicorn worker processes (HELIX_WEB_WORKERS)")
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("runner", help="run a runner node (configured by HELIX_RUNNER_* variables)")
    run.add_argument("runner_args", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_runner)
    user_commands = _user_commands()
    if user_commands is not None:  # a user's commands, over the API, where the client is installed
        user_commands.add_user_commands(sub)
    return p


def _user_commands():
    """The user commands (clients/python: helix_client.cli), or None on an install without them."""
    try:
        from helix_client import cli
    except ImportError:
        return None
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    user_commands = _user_commands()
    if user_commands is not None and args.command == "usage" and args.mine:
        args.func = user_commands.cmd_usage
        user_commands.run(args)
    elif user_commands is not None and args.command in user_commands.USER_COMMANDS:
        user_commands.run(args)
    else:
        args.func(args)


if __name__ == "__main__":
    main()
