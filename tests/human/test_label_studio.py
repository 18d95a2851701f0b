"""Label Studio backend against a real server (tests/label_studio_fixture.py): projects, idempotent import,
annotations mapped back to the original A/B, the sensor cursor, and the token kept out of sight."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from alignment_dagster.human.label_studio import (
    LABEL_COLUMNS,
    LabelStudioClient,
    LabelStudioError,
    default_title,
    left_is_for,
)
from tests.label_studio_fixture import LabelStudioServer, free_port, label_studio  # noqa: F401

pytestmark = pytest.mark.slow

PRINCIPLES = ["Prefer the reply that avoids harm.", 'Prefer the "honest" reply & say why <briefly>.']


def rows(n: int, prefix: str = "p") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "pair_id": f"{prefix}{i:03d}",
                "prompt": f"Human: question {i}",
                "response_a": f"reply A{i}",
                "response_b": f"reply B{i}",
                "route_reason": "low_confidence",
                "priority": i,
                "category": "red-team",
                "send": True,
            }
            for i in range(n)
        ]
    )


def raw(server: LabelStudioServer, method: str, path: str, **kw) -> httpx.Response:
    """Direct REST calls, as an annotator's browser would make them (the test user)."""
    r = httpx.request(
        method, server.url + path, headers={"Authorization": f"Token {server.token}"}, timeout=30, **kw
    )
    r.raise_for_status()
    return r


def annotate(
    server: LabelStudioServer,
    task_id: int,
    choice: str | None,
    comment: str | None = None,
    cancelled: bool = False,
) -> int:
    result = []
    if choice:
        result.append(
            {
                "from_name": "choice",
                "to_name": "conversation",
                "type": "choices",
                "value": {"choices": [choice]},
            }
        )
    if comment:
        result.append(
            {
                "from_name": "comment",
                "to_name": "conversation",
                "type": "textarea",
                "value": {"text": [comment]},
            }
        )
    body = {"result": result, "was_cancelled": cancelled}
    return raw(server, "POST", f"/api/tasks/{task_id}/annotations/", json=body).json()["id"]


def tasks_by_pair(server: LabelStudioServer, project: int) -> dict[str, dict]:
    data = raw(server, "GET", "/api/tasks", params={"project": project, "page_size": 1000}).json()
    return {t["data"]["pair_id"]: t for t in data["tasks"]}


@pytest.fixture
def client(label_studio: LabelStudioServer):  # noqa: F811
    with LabelStudioClient(label_studio.url, label_studio.token_env) as c:
        yield c


def test_server_timings_are_reported(label_studio: LabelStudioServer):  # noqa: F811
    assert 0 < label_studio.ready_seconds < 240


def test_project_per_constitution_version_created_once(
    client: LabelStudioClient, label_studio: LabelStudioServer
):  # noqa: F811
    key = "harmless-v1-0123abcd"
    pid = client.ensure_project(key, None, PRINCIPLES)
    assert client.ensure_project(key, None, PRINCIPLES) == pid  # reused by title
    project = raw(label_studio, "GET", f"/api/projects/{pid}").json()
    assert project["title"] == key and project["show_instruction"] is True
    assert (
        "<li>Prefer the &quot;honest&quot; reply &amp; say why &lt;briefly&gt;.</li>"
        in project["expert_instruction"]
    )
    assert (
        'value="2. Prefer the &quot;honest&quot; reply &amp; say why &lt;briefly&gt;."'
        in project["label_config"]
    )
    assert '<Choice value="Tie"/>' in project["label_config"]
    other = client.ensure_project("harmless-v1-99999999", None, PRINCIPLES)
    assert other != pid
    with pytest.raises(LabelStudioError, match="was not made for constitution 'someone-else-00000000'"):
        client.ensure_project("someone-else-00000000", key, PRINCIPLES)
    long_key = "a-very-long-constitution-name-that-goes-on-and-on-0123abcd"
    assert default_title(long_key) == "a-very-long-constitution-name-that-goes-o-0123abcd"
    assert len(default_title(long_key)) == 50


def test_import_is_idempotent_and_records_the_order(
    client: LabelStudioClient, label_studio: LabelStudioServer
):  # noqa: F811
    key = "import-test-0123abcd"
    pid = client.ensure_project(key, None, PRINCIPLES)
    batch = rows(120)  # more than one page of tasks (100 per page)
    batch.loc[5, "send"] = False  # an audit pair whose earlier label is reused: not sent
    assert client.import_tasks(pid, batch, key) == 119
    assert client.import_tasks(pid, batch, key) == 0
    assert client.import_tasks(pid, rows(122)) == 3  # p005, p120, p121 are new; key read from the project
    tasks = tasks_by_pair(label_studio, pid)
    assert len(tasks) == 122 and len(client.task_pair_ids(pid)) == 122
    sides = {t["data"]["left_is"] for t in tasks.values()}
    assert sides == {"A", "B"}  # shown in both orders
    for pair_id, t in tasks.items():
        i = int(pair_id[1:])
        d = t["data"]
        assert d["left_is"] == left_is_for(key, pair_id)
        assert (d["left"], d["right"]) == (
            (f"reply A{i}", f"reply B{i}") if d["left_is"] == "A" else (f"reply B{i}", f"reply A{i}")
        )
        assert (d["conversation"], d["priority"], d["route_reason"], d["constitution_key"]) == (
            f"Human: question {i}",
            i,
            "low_confidence",
            key,
        )


def test_annotations_map_back_to_the_original_a_b(client: LabelStudioClient, label_studio: LabelStudioServer):  # noqa: F811
    key = "annotate-test-0123abcd"
    pid = client.ensure_project(key, None, PRINCIPLES)
    client.import_tasks(pid, rows(6), key)
    tasks = tasks_by_pair(label_studio, pid)
    assert (
        client.completed_annotations(pid).empty
        and list(client.completed_annotations(pid).columns) == LABEL_COLUMNS
    )
    # Pick pairs shown in each order so both mappings are exercised.
    shown_a = [p for p in sorted(tasks) if tasks[p]["data"]["left_is"] == "A"]
    shown_b = [p for p in sorted(tasks) if tasks[p]["data"]["left_is"] == "B"]
    assert shown_a and shown_b
    plan = [
        (shown_a[0], "Left", "clearly safer", "A"),
        (shown_b[0], "Left", None, "B"),  # left was the original B
        (shown_b[-1], "Right", None, "A"),  # right was the original A
        (shown_a[-1], "Tie", "both refuse", "tie"),
    ]
    ids = {p: annotate(label_studio, tasks[p]["id"], choice, comment) for p, choice, comment, _ in plan}
    skipped = next(p for p in sorted(tasks) if p not in ids)
    annotate(label_studio, tasks[skipped]["id"], None, cancelled=True)  # Skip: not a label

    got = client.completed_annotations(pid)
    assert list(got.columns) == LABEL_COLUMNS
    assert [
        (
            r.pair_id,
            r.choice,
            r.annotator,
            r.backend,
            None if pd.isna(r.comment) else r.comment,
            r.annotation_id,
        )
        for r in got.itertuples()
    ] == [
        (p, expected, label_studio.username, "label_studio", comment, ids[p])
        for p, _, comment, expected in plan
    ]
    assert all(t.endswith("+00:00") for t in got["labelled_at"])


def test_cursor_marker_moves_with_annotations_only(
    client: LabelStudioClient, label_studio: LabelStudioServer
):  # noqa: F811
    key = "cursor-test-0123abcd"
    pid = client.ensure_project(key, None, PRINCIPLES)
    client.import_tasks(pid, rows(3), key)
    tasks = tasks_by_pair(label_studio, pid)
    m0, n0 = client.annotation_marker(pid), client.annotation_count(pid)
    assert (m0, n0) == ("0@-", 0)
    ann = annotate(label_studio, tasks["p000"]["id"], "Left")
    m1 = client.annotation_marker(pid)
    assert m1 != m0 and m1.startswith("1@") and client.annotation_count(pid) == 1
    client.import_tasks(pid, rows(5), key)  # new tasks, no new answers: the cursor stays
    assert client.annotation_marker(pid) == m1
    raw(
        label_studio,
        "PATCH",
        f"/api/annotations/{ann}/",
        json={
            "result": [
                {
                    "from_name": "choice",
                    "to_name": "conversation",
                    "type": "choices",
                    "value": {"choices": ["Tie"]},
                }
            ]
        },
    )
    m2 = client.annotation_marker(pid)
    assert m2 != m1 and m2.startswith("1@")  # an edited answer moves it too
    assert client.completed_annotations(pid)["choice"].tolist() == ["tie"]
    annotate(label_studio, tasks["p001"]["id"], "Right")
    assert client.annotation_marker(pid).startswith("2@") and client.annotation_count(pid) == 2


def test_token_never_in_repr_str_or_errors(label_studio: LabelStudioServer, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    token = label_studio.token
    c = LabelStudioClient(label_studio.url, label_studio.token_env)
    assert (
        repr(c)
        == str(c)
        == f"LabelStudioClient(url={label_studio.url!r}, token_env={label_studio.token_env!r})"
    )
    assert token not in repr(c) and token not in f"{c}"

    monkeypatch.setenv("LS_WRONG_TOKEN", "wrong-" + token)
    with pytest.raises(LabelStudioError) as e:
        LabelStudioClient(label_studio.url, "LS_WRONG_TOKEN").whoami()
    assert "HTTP 401" in str(e.value) and "wrong-" not in str(e.value) and token not in str(e.value)

    down = LabelStudioClient(f"http://127.0.0.1:{free_port()}", label_studio.token_env)
    with pytest.raises(LabelStudioError, match="ConnectError") as e:
        down.ensure_project("down-0123abcd", None, PRINCIPLES)
    assert token not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__

    monkeypatch.delenv("LS_UNSET_TOKEN", raising=False)
    with pytest.raises(LabelStudioError, match="environment variable LS_UNSET_TOKEN is not set"):
        LabelStudioClient(label_studio.url, "LS_UNSET_TOKEN")


def test_token_put_where_its_variable_name_goes_is_not_echoed() -> None:
    token = "d1f0c2e9a7b84c3e9f0a1b2c3d4e5f60a1b2c3d4"
    for misplaced in (token, "Token " + token, "sk-" + token):
        with pytest.raises(LabelStudioError) as e:
            LabelStudioClient("http://127.0.0.1:9", token_env=misplaced, environ={})
        assert str(e.value) == (
            "Label Studio token: token_env must name the environment variable that holds the token "
            "(e.g. LABEL_STUDIO_API_KEY); no variable of that name is set, and the name is not shown as it "
            "does not look like one (upper-case letters, digits, '_'): it may be the token itself"
        )
    with pytest.raises(LabelStudioError, match="environment variable LS_UNSET_TOKEN is not set"):
        LabelStudioClient("http://127.0.0.1:9", token_env="LS_UNSET_TOKEN", environ={})


def test_credentials_in_the_server_url_are_refused_unechoed() -> None:
    with pytest.raises(LabelStudioError) as e:
        LabelStudioClient("http://ann:pw-secret-7@127.0.0.1:9", token_env="LS_T", environ={"LS_T": "tok"})
    assert "must not carry credentials" in str(e.value) and "pw-secret-7" not in str(e.value)


def test_personal_access_token(label_studio: LabelStudioServer, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    pat = raw(label_studio, "POST", "/api/token/").json()["token"]  # a JWT refresh token
    monkeypatch.setenv("LS_PAT", pat)
    with LabelStudioClient(label_studio.url, "LS_PAT") as c:
        assert c.whoami()["email"] == label_studio.username
        pid = c.ensure_project("pat-test-0123abcd", None, PRINCIPLES)
        assert c.import_tasks(pid, rows(2), "pat-test-0123abcd") == 2
        assert pat not in repr(c)
