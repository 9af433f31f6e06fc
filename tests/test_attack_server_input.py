"""Issue 12 item 10, the user server's half: no 500 and no traceback on bad input.

Deeply nested JSON, invalid notebooks (`cells` not a list, a lone surrogate, deep metadata,
NaN), a 300-character file name and other over-long paths, fields of the wrong type: each
gets a 4xx in jupyter_server's shape {"message", "reason"}, and nothing is stored (a
notebook failing validation never overwrites the saved one). Against a real user server
running as a real user; then the notebook validator and the body parser under Hypothesis.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_singleuser_harness import Server, start_server

from minihub.errors import BadRequest
from minihub.singleuser import strictjson
from minihub.singleuser.contents import NAME_MAX, notebook_bytes

pytestmark = pytest.mark.timeout(180)

LONG = "a" * 300  # the file name
GOOD = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {},
    "cells": [{"id": "c1", "cell_type": "markdown", "metadata": {}, "source": "kept"}],
}


def nested(depth: int, leaf: Any = None) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def nb(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def put_nb(content: Any) -> str:
    return json.dumps({"type": "notebook", "content": content})


def put_text(text: str, **extra: Any) -> str:
    return json.dumps({"type": "file", "format": "text", "content": text, **extra})


SURROGATE_NB = put_nb(nb()).replace('"kept"', '"\\ud800"')
DEEP_JSON = '{"type": "notebook", "content": ' + "[" * 50_000 + "]" * 50_000 + "}"

# (method, path under the server's url, body, expected status)
BAD_REQUESTS: list[tuple[str, str, str | bytes | None, int]] = [
    ("PUT", "api/contents/saved.ipynb", DEEP_JSON, 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(cells=5)), 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(cells=[5, "x"])), 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(cells={"0": {}})), 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(metadata=[])), 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(metadata=nested(150))), 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(metadata=nested(900))), 400),
    ("PUT", "api/contents/saved.ipynb", SURROGATE_NB, 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(metadata={"x": float("nan")})), 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(nbformat=4.0)), 400),
    ("PUT", "api/contents/saved.ipynb", put_nb(nb(cells=[{"cell_type": "code"}])), 400),
    ("PUT", "api/contents/saved.ipynb", put_nb("not a notebook"), 400),
    ("PUT", "api/contents/saved.ipynb", b'{"type": "notebook", "content": "\xff"}', 400),
    ("PUT", "api/contents/saved.ipynb", "[1, 2]", 400),
    ("PUT", "api/contents/note.txt", put_text("x").replace('"x"', '"\\udc80"'), 400),
    ("PUT", "api/contents/note.txt", put_text("x", chunk=0), 400),
    ("PUT", "api/contents/note.txt", put_text("x", chunk="2"), 400),
    ("PUT", "api/contents/note.txt", put_text("x", chunk=True), 400),
    ("PUT", f"api/contents/{LONG}.txt", put_text("x"), 400),
    ("PUT", f"api/contents/{LONG}.ipynb", put_nb(GOOD), 400),
    ("PUT", f"api/contents/{LONG}", json.dumps({"type": "directory"}), 400),
    ("PUT", f"api/contents/{'é' * 128}.txt", put_text("x"), 400),  # 256 bytes in UTF-8
    ("PUT", "api/contents/" + "/".join(["b" * 200] * 25), put_text("x"), 400),
    ("PUT", "api/contents/saved.ipynb/x.txt", put_text("x"), 400),
    ("PUT", "api/contents/nowhere/x.txt", put_text("x"), 404),
    ("GET", f"api/contents/{LONG}", None, 400),
    ("GET", f"files/{LONG}", None, 400),
    ("DELETE", f"api/contents/{LONG}", None, 400),
    ("POST", f"api/contents/{LONG}/checkpoints", None, 400),
    ("PATCH", "api/contents/saved.ipynb", json.dumps({"path": LONG}), 400),
    ("PATCH", "api/contents/saved.ipynb", json.dumps({"path": ["x"]}), 400),
    ("PATCH", "api/contents/dir", json.dumps({"path": "dir/inside"}), 400),
    ("POST", "api/contents/dir", json.dumps({"copy_from": {"path": "saved.ipynb"}}), 400),
    ("POST", "api/contents/dir", json.dumps({"copy_from": LONG}), 400),
    ("POST", "api/contents/dir", json.dumps({"ext": "/../x"}), 400),
    ("POST", "api/contents/dir", json.dumps({"type": ["file"]}), 400),
    ("POST", "api/contents", DEEP_JSON, 400),
    ("POST", "api/sessions", json.dumps({"path": "x.ipynb", "kernel": "python3"}), 400),
    ("POST", "api/sessions", json.dumps({"path": ["x"]}), 400),
    ("POST", "api/sessions", json.dumps({"path": "x", "kernel": {"id": 5}}), 400),
    ("POST", "api/sessions", json.dumps({"path": "x", "name": {}, "kernel": {}}), 400),
    ("POST", "api/kernels", json.dumps({"name": {"a": 1}}), 400),
    ("POST", "api/kernels", DEEP_JSON, 400),
    ("POST", "api/kernels", '{"name": NaN}', 400),
    ("POST", "api/kernels", json.dumps({"path": "dir/a\x00b.ipynb"}), 400),
    ("POST", "api/sessions", json.dumps({"path": "a\x00b.ipynb", "kernel": {}}), 400),
    ("PUT", "api/contents/", put_text("x"), 400),
]


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    user = make_system_user("mhsi_bo")
    srv = start_server(user, tmp_path_factory.mktemp("mhsi") / "server.log", kernel_zygote=False)
    yield srv
    srv.stop()


@pytest.fixture
async def http(server: Server) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers=server.headers, timeout=aiohttp.ClientTimeout(total=60)
    ) as s:
        r = await s.put(server.url + "api/contents/saved.ipynb", data=put_nb(GOOD))
        assert r.status in (200, 201), await r.text()
        r = await s.put(server.url + "api/contents/dir", json={"type": "directory"})
        assert r.status in (200, 201)
        yield s


def snapshot(home: str) -> dict[str, bytes]:
    """Every file under the home (hidden ones too: temp and staging files) and its bytes."""
    found = {}
    for folder, _, files in os.walk(home):
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, home)] = Path(path).read_bytes()
    return found


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    BAD_REQUESTS,
    ids=[f"{m} {p[:40]} {i}" for i, (m, p, _, _) in enumerate(BAD_REQUESTS)],
)
async def test_bad_input_is_a_4xx_and_stores_nothing(
    http: aiohttp.ClientSession,
    server: Server,
    method: str,
    path: str,
    body: str | bytes | None,
    status: int,
) -> None:
    before = snapshot(server.user.home)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    async with http.request(method, server.url + path, data=body, headers=headers) as r:
        reply = await r.json()
        assert r.status == status, reply
    assert set(reply) == {"message", "reason"} and reply["message"]
    assert len(reply["message"]) <= 600
    assert snapshot(server.user.home) == before
    async with http.get(server.url + "api/contents/saved.ipynb") as r:
        saved = await r.json()
    assert saved["content"]["cells"][0]["source"] == "kept"


async def test_the_log_holds_no_traceback(http: aiohttp.ClientSession, server: Server) -> None:
    for method, path, body, _ in BAD_REQUESTS[:12]:
        async with http.request(method, server.url + path, data=body) as r:
            assert r.status < 500
    text = server.log.read_text("utf-8", "replace")
    assert "Traceback" not in text and "unhandled error" not in text
    assert LONG not in text  # a logged path is bounded


async def test_names_up_to_the_limit_still_work(
    http: aiohttp.ClientSession, server: Server
) -> None:
    """The limit is the filesystem's: a 255-byte name saves, chunked too (its temp and
    staging files have shorter names)."""
    name = "n" * (NAME_MAX - len(".txt")) + ".txt"
    wide = "\U0001f600" * 62 + ".py"  # 251 bytes in 65 characters
    for chunk in (1, -1):
        for each in (name, wide):
            r = await http.put(
                server.url + f"api/contents/{each}", data=put_text(f"part{chunk}", chunk=chunk)
            )
            assert r.status in (200, 201), await r.text()
    r = await http.get(server.url + f"api/contents/{name}")
    assert (await r.json())["content"] == "part1part-1"
    r = await http.put(server.url + f"api/contents/{wide}", data=put_text("whole"))
    assert r.status == 200, await r.text()
    r = await http.put(server.url + f"api/contents/{'n' * 249}.ipynb", data=put_nb(GOOD))
    assert r.status == 201, await r.text()
    r = await http.patch(server.url + f"api/contents/{name}", json={"path": "short.txt"})
    assert r.status == 200
    assert not [n for n in os.listdir(server.user.home) if n.startswith(".~")]


async def test_a_notebook_written_too_deep_is_a_400_to_read(
    http: aiohttp.ClientSession, server: Server
) -> None:
    """A kernel (the user's code) can write any file; reading it back is a 400, not a 500."""
    path = Path(server.user.home, "deep.ipynb")
    path.write_text(json.dumps(nb(metadata=nested(500))))
    os.chown(path, server.user.uid, server.user.gid)
    async with http.get(server.url + "api/contents/deep.ipynb") as r:
        assert r.status == 400 and "Unreadable" in (await r.json())["message"]
    async with http.get(server.url + "api/contents") as r:
        assert r.status == 200  # the listing does not read it


# --- the notebook validator and the body parser under Hypothesis -------------------------

fast = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
keys = st.sampled_from(["k", "k2", "name", "x", "cells", "source", "metadata"])
# Lone surrogates included: st.characters() leaves them out unless asked.
hostile_chars = st.characters() | st.characters(categories=["Cs"])
hostile_text = st.text(hostile_chars, max_size=10)
leaves = st.none() | st.booleans() | st.integers() | st.floats() | hostile_text
anything = st.recursive(
    leaves,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(keys | hostile_text, c, max_size=4),
    max_leaves=25,
)
deep = st.integers(90, 400).map(lambda n: nested(n, 1))

clean_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
clean_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text,
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c"]), c, max_size=3)
    ),
    max_leaves=10,
)
# Keys no schema knows (tags, kernelspec ... have types of their own).
meta = st.dictionaries(st.sampled_from(["k", "x1", "other"]), clean_json, max_size=3)


@st.composite
def cells(draw: st.DrawFn, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["code", "markdown", "raw"]))
    cell: dict[str, Any] = {
        "id": f"cell-{index}",
        "cell_type": kind,
        "metadata": draw(meta),
        "source": draw(clean_text),
    }
    if kind == "code":
        cell["execution_count"] = draw(st.none() | st.integers(1, 99))
        cell["outputs"] = [
            {"output_type": "stream", "name": "stdout", "text": draw(clean_text)}
            for _ in range(draw(st.integers(0, 2)))
        ]
    return cell


@st.composite
def notebooks(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 4))
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": draw(meta),
        "cells": [draw(cells(i)) for i in range(n)],
    }


@st.composite
def broken_notebooks(draw: st.DrawFn) -> Any:
    """A valid notebook with one part replaced by anything at all."""
    book = draw(notebooks())
    where = draw(
        st.sampled_from(
            [
                "cells",
                "metadata",
                "nbformat",
                "nbformat_minor",
                "cell",
                "cell metadata",
                "cell source",
                "cell id",
            ]
        )
    )
    junk = draw(anything | deep)
    if not where.startswith("cell"):
        book[where] = junk
    elif where == "cells" or not book["cells"]:
        book["cells"] = junk
    elif where == "cell":
        book["cells"][0] = junk
    else:
        book["cells"][0][where.split()[1]] = junk
    return book


def _written(content: Any) -> bytes | None:
    try:
        return notebook_bytes(content)
    except BadRequest as e:
        assert e.status == 400 and e.message
        return None


@fast
@given(anything | deep | broken_notebooks())
def test_validator_raises_only_bad_request_and_writes_valid_json(content: Any) -> None:
    data = _written(content)
    if data is None:
        return
    text = data.decode("utf-8")  # strict: no surrogate reached the file
    strictjson.check_value(json.loads(text))
    nbformat.validate(nbformat.reads(text, as_version=4))


@fast
@given(notebooks())
def test_validator_round_trip(book: dict[str, Any]) -> None:
    data = _written(book)
    assert data is not None, book
    assert nbformat.reads(data.decode(), as_version=4) == book


@fast
@given(st.lists(st.sampled_from(["a", None]), min_size=1, max_size=5))
def test_missing_or_repeated_cell_ids_are_given_fresh_ones(ids: list[str | None]) -> None:
    book = {**GOOD, "cells": [{**GOOD["cells"][0], "id": i} for i in ids]}
    for cell in book["cells"]:
        if cell["id"] is None:
            del cell["id"]
    data = _written(book)
    assert data is not None
    got = [c["id"] for c in nbformat.reads(data.decode(), as_version=4).cells]
    assert len(set(got)) == len(ids)
    assert book["cells"][0].get("id") in (None, "a")  # the body itself is not changed


@fast
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(hostile_chars, max_size=200),
        st.builds(json.dumps, anything),
    )
)
def test_body_parser_raises_only_its_error(raw: bytes | str) -> None:
    try:
        value = strictjson.loads(raw)
    except strictjson.JSONInputError as e:
        assert str(e)
        return
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


@given(st.integers(1, 3000))
@fast
def test_depth_limit(depth: int) -> None:
    text = "[" * depth + "]" * depth
    if depth <= strictjson.MAX_DEPTH:
        assert strictjson.loads(text) is not None
    else:
        with pytest.raises(strictjson.JSONInputError):
            strictjson.loads(text)
