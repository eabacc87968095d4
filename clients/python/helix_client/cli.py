"""The `helix` command's user commands, on the client: login, chat, image, finetune, watch,
sessions, files. Progress and notes go to stderr, results to stdout (`--json` for scripts); a
refusal is one line with the server's message and exit code 1 (2: bad usage, 130: interrupted).
The admin commands beside them (controlplane/cli.py) act on the database directly."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from helix_client.client import DEFAULT_URL, Client
from helix_client.errors import HelixError

SPARKS = "▁▂▃▄▅▆▇█"


def config_file() -> Path:
    """Where `helix login` keeps the URL and key: the user's config folder, readable by them alone."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "helix" / "credentials.json"


def _saved() -> dict[str, str]:
    try:
        return json.loads(config_file().read_text())
    except (OSError, ValueError):
        return {}


def _client(args: argparse.Namespace) -> Client:
    """HELIX_URL and HELIX_API_KEY win over what `helix login` kept."""
    saved = _saved()
    url = os.environ.get("HELIX_URL") or saved.get("url") or DEFAULT_URL
    return Client(url, os.environ.get("HELIX_API_KEY") or saved.get("api_key"))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def cmd_login(args: argparse.Namespace) -> None:
    import getpass

    url = (args.url or os.environ.get("HELIX_URL") or DEFAULT_URL).rstrip("/")
    key = args.key or os.environ.get("HELIX_API_KEY") or getpass.getpass("API key: ").strip()
    with Client(url, key) as client:
        status = client.send(_status_call())
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        json.dump({"url": url, "api_key": key}, f)
    os.chmod(path, 0o600)  # also when the file was there before, with wider rights
    print(f"signed in to {url} as {status.get('email') or status.get('user')}; key kept in {path}", file=sys.stderr)


def _status_call():
    from helix_client.calls import Call

    return Call("GET", "/api/v1/status")


def cmd_chat(args: argparse.Namespace) -> None:
    options = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    with _client(args) as client:
        chat = client.chat(args.prompt, session_id=args.session, model=args.model, **options)
        for part in chat:
            if not args.json:
                sys.stdout.write(part)
                sys.stdout.flush()
        if args.json:
            _print_json({"session_id": chat.session_id, "reply": chat.reply})
            return
        print()
        cited = chat.reply.get("citations") or []
        if cited:  # the chunks of the session's documents the reply was given
            print("sources: " + ", ".join(f"{c['file']} chunk {c['chunk']}" for c in cited), file=sys.stderr)
        print(f"session {chat.session_id}: go on with  helix chat -s {chat.session_id} \"...\"", file=sys.stderr)


def cmd_image(args: argparse.Namespace) -> None:
    options = {"seed": args.seed, "width": args.width, "height": args.height, "steps": args.steps}
    with _client(args) as client:
        images = client.image(args.prompt, model=args.model, **options)
    written = []
    for n, png in enumerate(images):
        path = Path(args.output) if len(images) == 1 else Path(args.output).with_stem(f"{Path(args.output).stem}-{n}")
        path.write_bytes(png)
        written.append(str(path))
    if args.json:
        _print_json({"files": written})
    else:
        print("\n".join(written))


def sparkline(values: list[float], width: int = 40) -> str:
    """The values' shape in block characters, the last `width` of them."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * (len(SPARKS) - 1)))] for v in values)


class FinetuneView:
    """The live view of a fine-tune: the upload, its stage and status, a progress bar, one per
    document (its chunks done), the pairs kept and dropped and the training loss as a sparkline;
    redrawn at every change (rich)."""

    def __init__(self):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.interaction: dict[str, Any] = {}
        self.uploaded = (0, 0)  # bytes sent, bytes in all

    def __enter__(self) -> "FinetuneView":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def update(self, interaction: dict[str, Any]) -> None:
        self.interaction = interaction
        self.live.update(self.render())

    def upload(self, sent: int, total: int) -> None:
        self.uploaded = (sent, total)
        self.live.update(self.render())

    def render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        def bar(done: float, total: float, note: str) -> Table:
            row = Table.grid(padding=(0, 1))
            row.add_row(ProgressBar(total=total or 1, completed=done, width=30), note)
            return row

        i = self.interaction
        table = Table.grid(padding=(0, 2))
        sent, total = self.uploaded
        if total:
            table.add_row("upload", bar(sent, total, f"{sent / 1024:,.1f} of {total / 1024:,.1f} kB"))
        if not i:
            return table
        table.add_row("stage", str(i.get("data_prep_stage") or i.get("state") or ""))
        table.add_row("status", str(i.get("status") or ""))
        table.add_row("progress", bar(int(i.get("progress") or 0), 100, f"{int(i.get('progress') or 0)}%"))
        kept = dropped = 0
        for name, document in (i.get("data_prep_files") or {}).items():
            chunks = document.get("chunks") or []
            done = sum(1 for c in chunks if c.get("state") in ("done", "error"))
            note = f"{done}/{len(chunks)} chunks" + (f"  {document['error']}" if document.get("error") else "")
            table.add_row(f"  {name}", bar(done, len(chunks), note))
            kept += sum(c.get("question_count") or 0 for c in chunks)
            dropped += sum(sum((c.get("dropped") or {}).values()) for c in chunks)
        pairs = len(i.get("qa_pairs") or []) or kept
        if pairs or dropped:
            table.add_row("pairs", f"{pairs} question/answer pairs kept, {dropped} dropped by the filters")
        losses = [p["loss"] for p in i.get("training_history") or [] if isinstance(p.get("loss"), (int, float))]
        if losses:
            table.add_row("loss", f"{sparkline(losses)}  {losses[-1]:.3f}")
        return table


def _watch_finetune(client: Client, as_json: bool, start: Callable[[FinetuneView | None], str]) -> None:
    """Follows a fine-tune to its end or its review, in the live view (quietly with --json), then
    reports it. `start(view)` gives the session's id: one it creates (its upload shown in the
    view) or one named."""
    def follow(view: FinetuneView | None) -> dict[str, Any]:
        session_id = start(view)
        for _ in client.follow(session_id, on_progress=view.update if view else None):
            pass
        return client.sessions.get(session_id)

    if as_json:
        _report_finetune(follow(None), True)
        return
    with FinetuneView() as view:
        done = follow(view)
    _report_finetune(done, False)


WAY_NAMES = {"base": "base model", "retrieval": "retrieval", "finetune": "fine-tuned", "both": "fine-tuned + retrieval"}
# --learn as the API's two fields; `best` sends neither: both ways run, and the report chooses.
LEARN = {"best": {}, "both": {"rag_enabled": True, "text_finetune_enabled": True},
         "retrieval": {"rag_enabled": True, "text_finetune_enabled": False},
         "finetune": {"rag_enabled": False, "text_finetune_enabled": True}}


def _report_finetune(session: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(session)
        return
    reply = session["interactions"][-1]
    evaluation = reply.get("evaluation")
    if isinstance(evaluation, dict):
        from rich.console import Console
        from rich.table import Table

        # The knowledge report's four ways where the session retrieves too; else before and after.
        scored = evaluation.get("ways") or {"base": evaluation.get("before") or {},
                                            "finetune": evaluation.get("after") or {}}
        ways = {way: scored[way] for way in WAY_NAMES if way in scored}
        table = Table(title=f"{'by way' if 'ways' in evaluation else 'before and after'},"
                            f" on {evaluation.get('held_out', 0)} held-out questions")
        table.add_column("measure")
        for way in ways:
            table.add_column(WAY_NAMES.get(way, way))
        for name in evaluation.get("metrics") or list(ways["base"]):
            table.add_row(name.replace("_", " "), *(f"{v:.2f}" if isinstance(v, (int, float)) else "–"
                                                    for v in (scores.get(name) for scores in ways.values())))
        knowledge = (session.get("config") or {}).get("knowledge") or {}
        table.caption = evaluation.get("note") or (
            f"chats use: {WAY_NAMES.get(knowledge['way'], knowledge['way'])}" if knowledge.get("way") else None)
        Console(stderr=True).print(table)
    state = reply.get("state")
    print(f"session {session['id']}: {state} ({reply.get('status')})", file=sys.stderr)
    if state == "complete":
        print(f"chat with it:  helix chat -s {session['id']} \"...\"", file=sys.stderr)
    elif state == "editing":
        print(f"review its pairs in the web app, then start it: /sessions/{session['id']}", file=sys.stderr)
    print(session["id"])


def cmd_finetune(args: argparse.Namespace) -> None:
    options = {"model_name": args.model, "manuallyReviewQuestions": True if args.review else None,
               "urls": " ".join(args.url) if args.url else None,
               **(LEARN[args.learn] if args.type == "text" else {})}
    with _client(args) as client:
        def create(view: FinetuneView | None) -> dict[str, Any]:
            session = client.sessions.create(mode="finetune", type=args.type, files=args.files,
                                             on_upload=view.upload if view else None, **options)
            if view:
                print(f"session {session['id']}: Ctrl-C detaches (it goes on; `helix watch {session['id']}`)",
                      file=sys.stderr)
            return session

        if not args.watch:
            session = create(None)
            _print_json(session) if args.json else print(session["id"])
            return
        _watch_finetune(client, args.json, lambda view: create(view)["id"])


def cmd_watch(args: argparse.Namespace) -> None:
    with _client(args) as client:
        session = client.sessions.get(args.session)
        if session.get("mode") == "finetune":
            _watch_finetune(client, args.json, lambda view: args.session)
            return
        for part in client.follow(args.session):
            if not args.json:
                sys.stdout.write(part)
                sys.stdout.flush()
        if args.json:
            _print_json(client.sessions.get(args.session))
        else:
            print()


def cmd_sessions(args: argparse.Namespace) -> None:
    with _client(args) as client:
        if args.action == "ls":
            listed = client.sessions.list(limit=args.limit)
            if args.json:
                _print_json(listed)
                return
            for s in listed["sessions"]:
                print(f"{s['id']}  {s['mode']:<9} {s['type']:<5} {s.get('updated', '')[:19]}  {s.get('name', '')}")
            return
        action = {"show": client.sessions.get, "rm": client.sessions.delete, "cancel": client.sessions.cancel,
                  "restart": client.sessions.restart}[args.action]
        result = action(args.session)
        if args.json or args.action == "show":
            _print_json(result)
        else:
            print(f"{args.action}: {args.session}", file=sys.stderr)


def cmd_files(args: argparse.Namespace) -> None:
    with _client(args) as client:
        if args.action == "ls":
            listed = client.files(args.path)
            if args.json:
                _print_json(listed)
            else:
                for f in listed:
                    print(f"{'d' if f['directory'] else '-'} {f['size']:>10}  {f['path']}")
        elif args.action == "put":
            saved = client.upload(args.to, args.files)
            _print_json(saved) if args.json else print("\n".join(f["path"] for f in saved))
        else:
            data = client.download(args.path)
            target = Path(args.output or Path(args.path).name)
            target.write_bytes(data)
            print(str(target))


def cmd_usage(args: argparse.Namespace) -> None:
    """`helix usage --mine`: the caller's usage by day (or model, key), this month's credits and the plan."""
    with _client(args) as client:
        used = client.usage(**{"from": args.start, "to": args.end, "group_by": args.group_by})
    if args.json:
        _print_json(used)
        return
    from rich.console import Console
    from rich.table import Table

    columns = ("jobs", "prompt_tokens", "completion_tokens", "images", "training_tokens", "credits")
    table = Table(title=f"your usage from {used['from'][:10]} to {used['to'][:10]}, by {used['group_by']}")
    for name in (used["group_by"], *columns):
        table.add_column(name, justify="left" if name == used["group_by"] else "right")
    for group in used["data"]:
        table.add_row(str(group.get(used["group_by"], "")), *(str(group.get(c, 0)) for c in columns))
    table.add_row("total", *(str(used["totals"].get(c, 0)) for c in columns))
    console = Console(width=None if sys.stdout.isatty() else 160)  # piped: no wrapping at 80 columns
    console.print(table)
    month = used["month"]
    limit = f" of {month['monthly_credits']}" if month.get("monthly_credits") else ""
    console.print(f"this month: {month['credits']} credits{limit} on plan {used['plan']['name']}"
                  + ("  (over 80% spent)" if month.get("warning") else ""))


def add_user_commands(sub) -> None:
    """The user commands, added to the `helix` command's subparsers."""
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="the result as JSON on stdout (for scripts)")

    login = sub.add_parser("login", help="keep this server's URL and your API key for the commands below")
    login.add_argument("--url", help=f"the server (default: HELIX_URL or {DEFAULT_URL})")
    login.add_argument("--key", help="the API key (default: HELIX_API_KEY, else asked)")
    login.set_defaults(func=cmd_login)

    chat = sub.add_parser("chat", parents=[json_flag], help="chat: the reply streams as it is written")
    chat.add_argument("prompt")
    chat.add_argument("-s", "--session", help="go on with this session")
    chat.add_argument("--model")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)
    chat.set_defaults(func=cmd_chat)

    image = sub.add_parser("image", parents=[json_flag], help="an image from a prompt, saved as PNG")
    image.add_argument("prompt")
    image.add_argument("-o", "--output", default="image.png")
    image.add_argument("--model")
    image.add_argument("--seed", type=int)
    image.add_argument("--width", type=int)
    image.add_argument("--height", type=int)
    image.add_argument("--steps", type=int)
    image.set_defaults(func=cmd_image)

    finetune = sub.add_parser("finetune", parents=[json_flag], help="fine-tune on documents (or images)")
    finetune.add_argument("files", nargs="*", help="documents, or captioned images with --type image")
    finetune.add_argument("--url", action="append", help="a web page to learn from (repeatable)")
    finetune.add_argument("--type", choices=("text", "image"), default="text")
    finetune.add_argument("--model")
    finetune.add_argument("--review", action="store_true", help="stop for you to review the pairs")
    finetune.add_argument("--learn", choices=tuple(LEARN), default="best",
                          help="retrieval, fine-tuning, both, or (best) both and chats use the one that scores better")
    finetune.add_argument("--watch", action="store_true", help="show its progress live until it ends")
    finetune.set_defaults(func=cmd_finetune)

    watch = sub.add_parser("watch", parents=[json_flag], help="follow a session's work again (Ctrl-C: detach)")
    watch.add_argument("session")
    watch.set_defaults(func=cmd_watch)

    sessions = sub.add_parser("sessions", help="your sessions").add_subparsers(dest="action", required=True)
    ls = sessions.add_parser("ls", parents=[json_flag], help="list them, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=cmd_sessions)
    for action, text in (("show", "one session, as JSON"), ("rm", "delete one"), ("cancel", "stop its work"),
                         ("restart", "run its last interaction again")):
        p = sessions.add_parser(action, parents=[json_flag], help=text)
        p.add_argument("session")
        p.set_defaults(func=cmd_sessions)

    files = sub.add_parser("files", help="your files").add_subparsers(dest="action", required=True)
    fls = files.add_parser("ls", parents=[json_flag], help="list a folder")
    fls.add_argument("path", nargs="?", default="")
    fls.set_defaults(func=cmd_files)
    put = files.add_parser("put", parents=[json_flag], help="upload files")
    put.add_argument("files", nargs="+")
    put.add_argument("--to", default="", help="the folder (default: your root)")
    put.set_defaults(func=cmd_files)
    get = files.add_parser("get", parents=[json_flag], help="download a file")
    get.add_argument("path")
    get.add_argument("-o", "--output")
    get.set_defaults(func=cmd_files)


USER_COMMANDS = frozenset({"login", "chat", "image", "finetune", "watch", "sessions", "files"})


def run(args: argparse.Namespace) -> None:
    """Runs a user command: a refusal is one line on stderr and exit code 1."""
    try:
        args.func(args)
    except HelixError as err:
        print(f"helix: {err.message if err.status else err}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("\ndetached: the work goes on (helix watch SESSION to follow it again)", file=sys.stderr)
        raise SystemExit(130) from None
