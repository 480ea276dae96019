"""$validate — https://hl7.org/fhir/R4/http.html#operations and
https://hl7.org/fhir/R4/resource-operation-validate.html ("This operation returns a 200 OK
whether or not the resource is valid. A 4xx or 5xx error means that the validation itself could
not be performed")"""

from support import JSON_HEADERS, body_resource, create, entry_ids, patient, search, unique


def errors(oo: dict) -> list[dict]:
    return [i for i in oo["issue"] if i["severity"] in ("error", "fatal")]


def validate(http, url, body) -> dict:
    r = http.post(url, json=body, headers=JSON_HEADERS)
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"
    return body_resource(r, "OperationOutcome")


def test_validate_valid_resource(http, base):
    """A valid Patient, posted directly (operations.html: a single resource parameter may be the
    body): 200 with an OperationOutcome listing no errors."""
    oo = validate(http, f"{base}/Patient/$validate", patient())
    assert errors(oo) == [], oo


def test_validate_as_parameters(http, base):
    """operations.html#request: the input as a Parameters resource with a `resource` part."""
    body = {"resourceType": "Parameters",
            "parameter": [{"name": "resource", "resource": patient()}]}
    assert errors(validate(http, f"{base}/Patient/$validate", body)) == []
    body["parameter"][0]["resource"]["gender"] = "robot"
    assert errors(validate(http, f"{base}/Patient/$validate", body))


def test_validate_invalid_resource_reports_errors_and_stores_nothing(http, base):
    """An invalid Patient (bad gender code, unknown element): still 200, the OperationOutcome
    has error issues pointing at the elements, and $validate never creates the resource."""
    family = unique()
    body = patient(family=family, gender="robot", testUnicornColour="purple")
    oo = validate(http, f"{base}/Patient/$validate", body)
    errs = errors(oo)
    assert errs, oo
    text = str(errs)
    assert "gender" in text and "testUnicornColour" in text, errs
    assert entry_ids(search(http, base, "Patient", {"family": family})) == []


def test_validate_instance_level(http, base):
    """resource-operation-validate.html: `[base]/[type]/[id]/$validate` validates a proposed
    version of an existing resource without changing it."""
    res = create(http, base, patient())
    ok = validate(http, f"{base}/Patient/{res['id']}/$validate", dict(res, gender="male"))
    assert errors(ok) == []
    bad = validate(http, f"{base}/Patient/{res['id']}/$validate", dict(res, gender="robot"))
    assert errors(bad)
    got = http.get(f"{base}/Patient/{res['id']}").json()
    assert got["gender"] == "female" and got["meta"]["versionId"] == res["meta"]["versionId"]


def test_validate_with_fhirpy_is_valid(fhirpy_client):
    """fhirpy's is_valid() posts to [type]/$validate and reads the OperationOutcome."""
    good = fhirpy_client.resource("Patient", name=[{"family": unique()}], gender="female")
    assert good.is_valid() is True
    bad = fhirpy_client.resource("Patient", name=[{"family": unique()}], gender="robot")
    assert bad.is_valid() is False
