"""veza_core.web.json_response: the API's answers are encoded by orjson and must read as the standard library's did."""

from __future__ import annotations

import datetime
import json
import uuid

from veza_core.web import json_response


def test_values_from_the_database_are_written_as_isoformat_and_str_write_them() -> None:
    minus_five = datetime.timezone(datetime.timedelta(hours=-5))
    stamps = [datetime.datetime(2026, 12, 4, 20, 1, 2, tzinfo=datetime.UTC),
              datetime.datetime(2026, 12, 4, 20, 1, 2, 120, tzinfo=datetime.UTC),
              datetime.datetime(2026, 12, 4, 20, 1, 2, 7, tzinfo=minus_five), datetime.datetime(2026, 12, 4, 20, 1, 2)]
    day, uid = datetime.date(2026, 12, 4), uuid.uuid4()
    response = json_response({"stamps": stamps, "day": day, "id": uid, "text": "é ☃", "n": 3, "none": None},
                             status=201, headers={"Cache-Control": "no-store"})
    assert response.status == 201
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {"stamps": [s.isoformat() for s in stamps], "day": day.isoformat(),
                                         "id": str(uid), "text": "é ☃", "n": 3, "none": None}


def test_keys_that_are_not_strings_are_written_as_the_standard_library_writes_them() -> None:
    data = {1: "one", "two": {3: [4]}}
    assert isinstance((body := json_response(data).body), bytes)
    assert json.loads(body) == json.loads(json.dumps(data))
