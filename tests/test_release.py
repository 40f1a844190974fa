"""Release gate, audit table, encrypted linkage and scan-phi, on real runs."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from medcurate.transforms.deid.gate import GateKey, Scanner, fingerprints, sequences
from tests.conftest import TEST_KEY, recipe_by_name, run_cli


def test_identifier_sequences_follow_the_kind_rules():
    assert sequences("DOE^JANE^QUINN", "name") == [("doe", "jane", "quinn"), ("doe",), ("jane",), ("quinn",)]
    assert sequences("03/14/1958", "date") == [("03", "14", "1958")]
    assert sequences("MRN 4471823", "id") == [("mrn", "4471823"), ("4471823",)]
    assert sequences("Springfield General Hospital", "place") == [("springfield", "general", "hospital")]
    assert sequences("Linear", "text") == [] and sequences("CHEST", "name") == [] and sequences("2019", "id") == []
    assert sequences("e+1", "text") == [] and sequences("1.0:1", "text") == []
    assert sequences("DOE_JANE_20190304_chest_ct", "file") == [
        ("doe", "jane", "20190304", "chest", "ct"), ("doe", "jane"), ("jane", "20190304"), ("20190304", "chest"),
        ("20190304",)]
    assert sequences("anatomical", "file") == [] or sequences("anatomical", "file") == [("anatomical",)]


def test_scanner_finds_identifiers_in_any_word_order_of_names_and_never_holds_them():
    gate = GateKey(os.urandom(32))
    table = fingerprints(gate, [("name", "DOE^JANE"), ("id", "MRN4471823"), ("date", "03/14/1958")])
    assert all(len(k) == 16 and "doe" not in k for k in table)  # fingerprints only
    scanner = Scanner(gate, table)
    assert scanner.kinds_in("Discussed with Jane Doe on 03-14-1958.") == {"name", "date"}
    assert scanner.kinds_in('{"id": "mrn4471823"}') == {"id"}
    assert scanner.kinds_in("A chest CT from 2019 with a janet sign.") == set()


@pytest.fixture(scope="module")
def demo_out(demo_run):
    out, code = demo_run
    assert code == 0
    return out


def test_the_demo_passes_the_gate_and_writes_the_audit(demo_out):
    summary = json.load(open(os.path.join(demo_out, "summary.json")))
    gate = json.load(open(os.path.join(demo_out, "release_gate.json")))
    assert summary["release_gate"]["passed"] and gate["hits"] == [] and gate["fingerprints"] > 100
    audit = pq.read_table(os.path.join(demo_out, "audit", "deid_audit.parquet")).to_pylist()
    catalog = pq.read_table(os.path.join(demo_out, "catalog", "catalog.parquet")).to_pylist()
    assert {a["key"] for a in audit} == {r["key"] for r in catalog if r["parent_key"] is None}
    dicom = [a for a in audit if a["method"] == "dicom" and a["dataset"] == "demo-chest-ct-dicom"]
    (ct,) = dicom
    actions = dict(ct["tag_actions"])
    assert actions["Z PatientName"] == 1 and actions["D PatientID"] == 1 and actions["X private"] >= 2
    assert actions["C StudyDate"] == 1 and ct["table_edition"] == "2024b" and ct["tool"].startswith("medcurate")
    assert "ACME_PRIVATE" in ct["private_creators"]
    reports = [a for a in audit if a["dataset"] == "demo-cxr"]
    assert all(dict(a["text_entities"]).get("PERSON", 0) >= 1 for a in reports)


def test_a_leak_through_the_recipe_fails_the_gate_without_printing_the_value(corpus, key_file, tmp_path, capsys):
    recipe = open(recipe_by_name(corpus, "ct-dicom")).read().replace(
        "name: Demo chest CT (DICOM series with planted identifiers)", "name: Scans of Jane Doe")
    path = os.path.join(corpus.root, "leaky.yaml")
    with open(path, "w") as f:
        f.write(recipe.replace("id: demo-chest-ct-dicom", "id: leaky"))
    out = tmp_path / "out"
    capsys.readouterr()
    code = run_cli(["run", path, "--out", str(out), "--key-file", key_file])
    err = capsys.readouterr().err
    assert code == 5 and "RELEASE GATE FAILED" in err
    gate = json.load(open(out / "release_gate.json"))
    assert not gate["passed"]
    assert {(h["file"], h["kind"]) for h in gate["hits"]} >= {("catalog/datasets.json", "name"),
                                                                ("catalog/catalog.parquet", "name")}
    text = (out / "release_gate.json").read_text() + err
    assert "Jane" not in text and "Doe" not in text


def test_encrypted_linkage_outside_the_release(corpus, key_file, tmp_path, capsys):
    key = tmp_path / "linkage.key"
    key.write_text("linkage-key-material-0123456789abcdef-0123456789")
    out, linkage = tmp_path / "out", tmp_path / "private" / "linkage.jsonl"
    recipe = recipe_by_name(corpus, "ct-dicom")
    assert run_cli(["run", recipe, "--out", str(out), "--key-file", key_file, "--linkage-out", str(linkage),
                    "--linkage-key-file", str(key)]) == 0
    import base64

    header, *lines = [json.loads(line) for line in linkage.read_text().splitlines()]
    assert header["cipher"] == "AES-256-GCM" and header["records"] == len(lines) >= 1
    for line in lines:  # encrypted at rest: the plaintext is in neither the line nor the decoded ciphertext
        # (the base64 text itself is not searched: random ciphertext spells short words such as "DOE" now and then)
        blob = base64.b64decode(line["record"])
        assert b"MRN4471823" not in blob and b"DOE" not in blob and "MRN4471823" not in line["key"]
    capsys.readouterr()
    assert run_cli(["linkage", "show", str(linkage), "--linkage-key-file", str(key)]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (row,) = [r for r in pq.read_table(out / "catalog" / "catalog.parquet").to_pylist() if r["product"] == "volume"]
    assert record["patient_id"] == "MRN4471823" and record["patient_pseudonym"] == row["patient_id"]
    assert record["key"] == row["key"] and -3652 <= record["date_offset_days"] <= -1
    assert record["study_uid_pseudonym"].startswith("2.25.")
    with pytest.raises(SystemExit, match="outside --out"):
        from medcurate.pipelines.cli import main

        main(["run", recipe, "--out", str(out), "--key-file", key_file, "--overwrite",
              "--linkage-out", str(out / "l.jsonl"), "--linkage-key-file", str(key)])
    with pytest.raises(SystemExit, match="linkage-key-file"):
        main(["run", recipe, "--out", str(tmp_path / "o2"), "--key-file", key_file, "--linkage-out", str(linkage)])


def test_scan_phi_command(demo_out, corpus, key_file, tmp_path, capsys):
    listing = tmp_path / "ids.txt"
    listing.write_text("".join(f"{k}\t{v}\n" for k, v in corpus.identifiers))
    capsys.readouterr()
    assert run_cli(["scan-phi", demo_out, "--identifiers", str(listing)]) == 0
    assert "no identifier found" in capsys.readouterr().out
    assert run_cli(["scan-phi", os.path.join(corpus.root, "cxr"), "--identifiers", str(listing)]) == 5
    out = capsys.readouterr().out
    assert "HIT" in out and "Zoe" not in out
    assert run_cli(["scan-phi", demo_out, *corpus.recipes, "--key-file", key_file]) == 0
    assert TEST_KEY.decode() not in capsys.readouterr().out
