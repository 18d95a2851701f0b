"""Label Studio backend over its REST API (httpx; no SDK): one project per constitution version.

The labelling interface shows the conversation and the two replies side by side as "Left" and "Right". Which
original reply (A or B) is on the left is decided per task by a hash of (constitution key, pair id) and
recorded in the task data (`left_is`), so annotators see no position pattern and every answer maps back to
the original A/B. Annotators answer with one `Choices` control (Left / Right / Tie; required) and may add a
comment. A `Pairwise` control would give only left/right, with no tie; answers made with one (a hand-edited
config) are still read. Label Studio's own Skip button records a cancelled annotation, which is not a label.
The constitution's principles are the project's instructions (shown before labelling) and are repeated
above the task.

Authentication: the token is read from an environment variable whose *name* is given, and is never
logged, repr'd or put in an error message (it is registered with `core.redaction`, and so is each access
token). A URL with credentials in it is refused. Every call has a 30 s timeout per connect or read and no
retry (but the one token refresh after a 401); a response is read up to 64 MiB, an error body up to 4 KiB,
of which a short redacted excerpt goes into the error. Two kinds of token work:
* a legacy API token (`Authorization: Token ...`; Label Studio 1.23 accepts it only when started with
  LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true);
* a personal access token (a JWT refresh token): exchanged at /api/token/refresh for a short-lived access
  token (`Authorization: Bearer ...`), refreshed again when the server answers 401.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pandas as pd

from alignment_dagster.core.keys import sha256_hex
from alignment_dagster.core.redaction import credentials_in, redact_text, register_secret
from alignment_dagster.core.remote import MAX_ERROR_BYTES, ResponseTooLarge, error_excerpt, read_body
from alignment_dagster.core.settings import looks_like_env_name
from alignment_dagster.human.labels import HUMAN_LABEL_COLUMNS, guidance_lines, utc_iso

BACKEND = "label_studio"
DEFAULT_TOKEN_ENV = "LABEL_STUDIO_API_KEY"
MAX_TITLE = 50  # Label Studio rejects longer project titles
PAGE_SIZE = 100
IMPORT_CHUNK = 500
LABEL_COLUMNS = [*HUMAN_LABEL_COLUMNS, "task_id", "annotation_id"]
_ANNOTATED = {
    "conjunction": "and",
    "items": [
        {"filter": "filter:tasks:total_annotations", "operator": "greater", "value": 0, "type": "Number"},
    ],
}


class LabelStudioError(RuntimeError):
    """A failed call to Label Studio; the message names the call and never contains the token."""


def left_is_for(constitution_key: str, pair_id: str) -> str:
    """Which original reply ("A" or "B") a task shows on the left: a per-task coin flip by hash."""
    return "B" if int(sha256_hex(f"ls-order:{constitution_key}:{pair_id}")[:8], 16) % 2 else "A"


def default_title(constitution_key: str) -> str:
    """The constitution key itself; over 50 characters, its slug is cut so the trailing -<sha8> survives."""
    if len(constitution_key) <= MAX_TITLE:
        return constitution_key
    return constitution_key[: MAX_TITLE - 9].rstrip("-") + constitution_key[-9:]


def _attr(text: str) -> str:
    """Text for a double-quoted XML attribute."""
    return escape(text, {'"': "&quot;", "\n": "&#10;"})


def label_config(principles: Sequence[str]) -> str:
    """The pairwise labelling interface (Label Studio XML)."""
    guidance = "".join(
        f'    <Header size="6" value="{_attr(f"{i}. {p}")}"/>\n' for i, p in enumerate(principles, start=1)
    )
    return (
        "<View>\n"
        '  <View style="padding: 0.5em 1em; background: #f6f6f6; border-radius: 4px">\n'
        '    <Header size="5" value="Which reply is better under these principles?"/>\n'
        f"{guidance}"
        "  </View>\n"
        '  <Header size="5" value="Conversation"/>\n'
        '  <Text name="conversation" value="$conversation"/>\n'
        '  <View style="display: flex; gap: 1em">\n'
        '    <View style="flex: 1"><Header size="5" value="Left reply"/>'
        '<Text name="left" value="$left"/></View>\n'
        '    <View style="flex: 1"><Header size="5" value="Right reply"/>'
        '<Text name="right" value="$right"/></View>\n'
        "  </View>\n"
        '  <Choices name="choice" toName="conversation" choice="single" required="true" showInline="true">\n'
        '    <Choice value="Left"/>\n    <Choice value="Right"/>\n    <Choice value="Tie"/>\n'
        "  </Choices>\n"
        '  <TextArea name="comment" toName="conversation" placeholder="Optional comment" rows="2" '
        'maxSubmissions="1" editable="true"/>\n'
        "</View>\n"
    )


def _instructions(constitution_key: str, principles: Sequence[str]) -> str:
    items = "".join(f"<li>{html.escape(p)}</li>" for p in principles)
    return (
        f"<p>Constitution <code>{html.escape(constitution_key)}</code>. Pick the reply that is better under "
        f"these principles:</p><ol>{items}</ol><p>Choose <b>Tie</b> when neither is better; use Skip when "
        "you cannot judge the task.</p>"
    )


def _constitution_in(description: str | None) -> str | None:
    """The key in the "constitution: <key>" marker that ensure_project puts in a project's description."""
    match = re.search(r"constitution: (\S+)", description or "")
    return match.group(1) if match else None


def _choice_from_result(result: list[dict]) -> tuple[str | None, str | None]:
    """(left/right/tie or None, comment or None) from one annotation's result list."""
    side = comment = None
    for item in result or []:
        value = item.get("value") or {}
        if item.get("type") == "choices" and value.get("choices"):
            side = {"left": "left", "right": "right", "tie": "tie"}.get(
                str(value["choices"][0]).strip().lower()
            )
        elif item.get("type") == "pairwise" and value.get("selected") in ("left", "right"):
            side = side or value["selected"]
        elif item.get("type") == "textarea" and value.get("text"):
            comment = "\n".join(str(t) for t in value["text"]).strip() or None
    return side, comment


class LabelStudioClient:
    """A Label Studio server at `url`, with the API token taken from the environment variable `token_env`."""

    def __init__(
        self,
        url: str,
        token_env: str = DEFAULT_TOKEN_ENV,
        *,
        timeout: float = 30.0,
        environ: Mapping[str, str] | None = None,
    ):
        if credentials_in(url):
            raise LabelStudioError(
                "Label Studio URL must not carry credentials (user:password@ or a secret query value): the "
                "token comes from the environment variable token_env names"
            )
        self.url = url.rstrip("/")
        self.token_env = token_env
        token = (os.environ if environ is None else environ).get(token_env, "").strip()
        if not token and looks_like_env_name(token_env):
            raise LabelStudioError(f"Label Studio token: environment variable {token_env} is not set")
        if not token:
            raise LabelStudioError(
                f"Label Studio token: token_env must name the environment variable that holds the "
                f"token (e.g. {DEFAULT_TOKEN_ENV}); no variable of that name is set, and the name "
                "is not shown as it does not look like one (upper-case letters, digits, '_'): it "
                "may be the token itself"
            )
        register_secret(token)
        self.__token = token  # name-mangled, and never part of repr/str or messages
        self.__access: str | None = None
        self._personal = token.count(".") == 2  # a JWT: personal access (refresh) token
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._users: dict[int, str] | None = None

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, token_env={self.token_env!r})"

    __str__ = __repr__

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        for secret in (self.__token, self.__access):
            if secret:
                text = text.replace(secret, "***")
        return redact_text(text)

    def _fail(self, method: str, path: str, message: str) -> LabelStudioError:
        return LabelStudioError(self._redact(f"Label Studio {method} {self.url}{path}: {message}"))

    def _auth_header(self, refresh: bool = False) -> dict[str, str]:
        if not self._personal:
            return {"Authorization": f"Token {self.__token}"}
        if self.__access is None or refresh:
            data = self._send("POST", "/api/token/refresh", json={"refresh": self.__token}, auth=False)
            access = data.get("access") if isinstance(data, dict) else None
            if not access:
                raise self._fail("POST", "/api/token/refresh", "no access token in the answer")
            register_secret(access)
            self.__access = access
        return {"Authorization": f"Bearer {self.__access}"}

    def _request(self, method: str, path: str, headers: dict, **kwargs: Any) -> tuple[int, bytes]:
        """(status, body) of one call, the body read bounded (an error body only its first 4 KiB)."""
        try:
            with self._http.stream(method, path, headers=headers, **kwargs) as resp:
                if resp.status_code >= 400:
                    return resp.status_code, read_body(resp, MAX_ERROR_BYTES, truncate=True)
                return resp.status_code, read_body(resp)
        except httpx.HTTPError as e:
            # `from None`: the httpx exception carries the request, which carries the headers.
            raise self._fail(method, path, f"{type(e).__name__}: {e}") from None
        except ResponseTooLarge as e:
            raise self._fail(method, path, str(e)) from None

    def _send(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        for attempt in (0, 1):
            headers = self._auth_header(refresh=attempt == 1) if auth else {}
            status, body = self._request(method, path, headers, **kwargs)
            if status == 401 and auth and self._personal and attempt == 0:
                continue  # the short-lived access token expired: refresh once and retry
            if status >= 400:
                raise self._fail(method, path, f"HTTP {status}: {self._error_text(body)}") from None
            if not body:
                return None
            try:
                return json.loads(body)
            except ValueError:
                raise self._fail(method, path, f"expected JSON, got {error_excerpt(body)!r}") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _error_text(raw: bytes) -> str:
        try:
            body = json.loads(raw)
        except ValueError:
            return error_excerpt(raw)
        if isinstance(body, dict):
            detail = str(body.get("detail") or "")
            if body.get("validation_errors"):
                detail += " " + json.dumps(body["validation_errors"])
            return error_excerpt((detail.strip() or json.dumps(body)).encode())
        return error_excerpt(json.dumps(body).encode())

    def _paged_tasks(self, project: int, params: dict[str, Any]) -> list[dict]:
        tasks: list[dict] = []
        page = 1
        while True:
            data = self._send(
                "GET",
                "/api/tasks",
                params={"project": project, "page": page, "page_size": PAGE_SIZE, **params},
            )
            batch = data.get("tasks", [])
            tasks += batch
            if not batch or len(tasks) >= int(data.get("total", 0)):
                return tasks
            page += 1

    # -- projects -----------------------------------------------------------------------------------------
    def whoami(self) -> dict:
        return self._send("GET", "/api/current-user/whoami")

    def find_project(self, title: str) -> dict | None:
        """The project with exactly this title (the oldest, if several), or None."""
        found: list[dict] = []
        page = 1
        while True:
            data = self._send("GET", "/api/projects", params={"page": page, "page_size": PAGE_SIZE})
            results = data.get("results", []) if isinstance(data, dict) else data
            found += [p for p in results if p.get("title") == title]
            if not isinstance(data, dict) or not data.get("next"):
                break
            page += 1
        return min(found, key=lambda p: p["id"]) if found else None

    def constitution_projects(self) -> dict[str, int]:
        """{constitution key: project id} for every project `ensure_project` made (the oldest per key), one
        paged listing: what a sensor polls, without one request per constitution version."""
        out: dict[str, int] = {}
        page = 1
        while True:
            data = self._send("GET", "/api/projects", params={"page": page, "page_size": PAGE_SIZE})
            results = data.get("results", []) if isinstance(data, dict) else data
            for p in results:
                key = _constitution_in(p.get("description"))
                if key is not None and (key not in out or int(p["id"]) < out[key]):
                    out[key] = int(p["id"])
            if not isinstance(data, dict) or not data.get("next"):
                return out
            page += 1

    def ensure_project(self, constitution_key: str, title: str | None, principles: Sequence[str]) -> int:
        """The id of this constitution version's project, created on first use and reused (by title) after.

        `title` defaults to the constitution key (cut to Label Studio's 50 characters keeping the sha8).
        A project with the title but made for another constitution key is an error, not a silent reuse.
        """
        title = title or default_title(constitution_key)
        if not 3 <= len(title) <= MAX_TITLE:
            raise ValueError(f"Label Studio project title {title!r}: must be 3 to {MAX_TITLE} characters")
        lines = guidance_lines(principles)
        marker = f"constitution: {constitution_key}"
        existing = self.find_project(title)
        if existing is not None:
            if _constitution_in(existing.get("description")) != constitution_key:
                raise LabelStudioError(
                    f"Label Studio project {title!r} (id {existing['id']}) exists but was not made for "
                    f"constitution {constitution_key!r}; pick another title"
                )
            return int(existing["id"])
        created = self._send(
            "POST",
            "/api/projects",
            json={
                "title": title,
                "description": f"Pairwise preference labels; {marker}",
                "label_config": label_config(lines),
                "expert_instruction": _instructions(constitution_key, lines),
                "show_instruction": True,
                "show_skip_button": True,
                "enable_empty_annotation": False,
                "maximum_annotations": 1,
            },
        )
        return int(created["id"])

    # -- tasks --------------------------------------------------------------------------------------------
    def task_pair_ids(self, project: int) -> set[str]:
        return {t["data"].get("pair_id") for t in self._paged_tasks(project, {"include": "id,data"})}

    def project_constitution(self, project: int) -> str:
        """The constitution key a project was made for (from the marker `ensure_project` writes)."""
        key = _constitution_in(self._send("GET", f"/api/projects/{project}").get("description"))
        if key is None:
            raise LabelStudioError(
                f"Label Studio project {project} was not made by ensure_project (no constitution)"
            )
        return key

    def import_tasks(self, project: int, rows: pd.DataFrame, constitution_key: str | None = None) -> int:
        """Add tasks for the rows (edge cases joined with pairs) not yet in the project; returns how many.

        Idempotent: pairs already present (by task data pair_id) are skipped, so re-running adds nothing.
        Rows with `send == False` (audit pairs whose earlier label is reused) are left out. The constitution
        key (which seeds each task's left/right order) is read from the project when not given.
        """
        need = {"pair_id", "prompt", "response_a", "response_b"} - set(rows.columns)
        if need:
            raise ValueError(f"import_tasks: rows lack column(s) {sorted(need)}")
        if constitution_key is None:
            constitution_key = self.project_constitution(project)
        df = rows[rows["send"].astype(bool)] if "send" in rows.columns else rows
        if "priority" in df.columns:
            df = df.sort_values(["priority", "pair_id"], kind="stable")
        present = self.task_pair_ids(project)
        tasks = []
        seen: set[str] = set()
        for r in df.to_dict(orient="records"):
            pid = str(r["pair_id"])
            if pid in present or pid in seen:
                continue
            seen.add(pid)
            left_is = left_is_for(constitution_key, pid)
            left, right = (
                (r["response_a"], r["response_b"]) if left_is == "A" else (r["response_b"], r["response_a"])
            )
            data = {
                "pair_id": pid,
                "constitution_key": constitution_key,
                "conversation": r["prompt"],
                "left": left,
                "right": right,
                "left_is": left_is,
            }
            for extra in ("priority", "route_reason", "category"):
                value = r.get(extra)
                if value is not None and not (isinstance(value, float) and value != value):
                    data[extra] = int(value) if extra == "priority" else str(value)
            tasks.append({"data": data})
        for i in range(0, len(tasks), IMPORT_CHUNK):
            self._send("POST", f"/api/projects/{project}/import", json=tasks[i : i + IMPORT_CHUNK])
        return len(tasks)

    # -- annotations --------------------------------------------------------------------------------------
    def _user_names(self) -> dict[int, str]:
        if self._users is None:
            data = self._send("GET", "/api/users")
            users = data.get("results", []) if isinstance(data, dict) else data
            self._users = {
                int(u["id"]): u.get("email") or u.get("username") or f"user-{u['id']}" for u in users
            }
        return self._users

    def completed_annotations(self, project: int) -> pd.DataFrame:
        """Submitted answers as human_labels rows (plus task_id, annotation_id), mapped back to A/B.

        Skipped (cancelled) annotations and ones without a choice are not labels and are left out.
        annotator is the Label Studio user's email; labelled_at is the annotation's last update (UTC).
        """
        users = None
        rows = []
        for task in self._paged_tasks(
            project, {"fields": "all", "query": json.dumps({"filters": _ANNOTATED})}
        ):
            data = task.get("data", {})
            left_is = data.get("left_is")
            if left_is not in ("A", "B") or not data.get("pair_id"):
                continue  # not one of our tasks
            for ann in task.get("annotations", []):
                if ann.get("was_cancelled"):
                    continue
                side, comment = _choice_from_result(ann.get("result", []))
                if side is None:
                    continue
                choice = (
                    "tie"
                    if side == "tie"
                    else left_is
                    if side == "left"
                    else ("B" if left_is == "A" else "A")
                )
                who = ann.get("completed_by")
                if isinstance(who, dict):
                    annotator = who.get("email") or f"user-{who.get('id')}"
                else:
                    users = users if users is not None else self._user_names()
                    annotator = users.get(int(who), f"user-{who}") if who is not None else "unknown"
                rows.append(
                    {
                        "pair_id": data["pair_id"],
                        "choice": choice,
                        "annotator": annotator,
                        "labelled_at": utc_iso(ann.get("updated_at") or ann.get("created_at")),
                        "backend": BACKEND,
                        "comment": comment,
                        "task_id": int(task["id"]),
                        "annotation_id": int(ann["id"]),
                    }
                )
        df = pd.DataFrame(rows, columns=LABEL_COLUMNS)
        return df.sort_values(["annotation_id"]).reset_index(drop=True)

    def annotation_count(self, project: int) -> int:
        """Annotations in the project (submitted, not skipped), from the project's own counter."""
        return int(self._send("GET", f"/api/projects/{project}").get("total_annotations_number") or 0)

    def annotation_marker(self, project: int) -> str:
        """A cheap cursor for a sensor: changes when an annotation is added, updated or deleted.

        "<annotations>@<last update of an annotated task>" from a single one-task request (task updated_at
        moves on every annotation change; importing tasks does not touch annotated tasks).
        """
        data = self._send(
            "GET",
            "/api/tasks",
            params={
                "project": project,
                "page": 1,
                "page_size": 1,
                "include": "id,updated_at",
                "query": json.dumps({"filters": _ANNOTATED, "ordering": ["-tasks:updated_at"]}),
            },
        )
        tasks = data.get("tasks") or []
        last = tasks[0]["updated_at"] if tasks else "-"
        return f"{int(data.get('total_annotations') or 0)}@{last}"
