"""Keys and keyed pseudonyms: deterministic, key-dependent, no dots, no key leaks."""
import pickle
import re

import pytest

from medcurate.schemas.records import SampleKey
from medcurate.transforms.common import SampleKeyCoder
from medcurate.transforms.pseudonym import KeyProblem, Pseudonymizer, Secret, load_key


def test_sample_key_string_form_has_no_dots_and_round_trips():
    key = SampleKey("nih-chestxray14", "0123456789abcdef0123")
    assert str(key) == "nih-chestxray14_0123456789abcdef0123"
    assert "." not in str(key.derive("drr-ap"))
    assert SampleKey.parse(str(key.derive("drr-ap"))) == key.derive("drr-ap")
    assert key.derive("drr-ap").derive("x") == SampleKey("nih-chestxray14", "0123456789abcdef0123", "drr-ap-x")


@pytest.mark.parametrize("dataset", ["NIH", "a.b", "a_b", "", "-x"])
def test_sample_key_rejects_dataset_ids_that_break_keys(dataset):
    with pytest.raises(ValueError):
        SampleKey(dataset, "abcdef12")


def test_sample_key_pickles_and_codes_deterministically():
    a = SampleKey("ds", "abcdef1234", "drr-ap")
    b = SampleKey(*["ds", "abcdef1234", "drr-ap"])
    assert pickle.dumps(a) == pickle.dumps(b)
    assert pickle.loads(pickle.dumps(a)) == a
    coder = SampleKeyCoder()
    assert coder.is_deterministic()
    assert coder.decode(coder.encode(a)) == a
    assert sorted([SampleKey("b", "00aa00aa"), SampleKey("a", "ffffffff")])[0].dataset == "a"


def test_pseudonyms_depend_on_key_and_nothing_else():
    p1, p1b = Pseudonymizer(Secret(b"k" * 32)), Pseudonymizer(Secret(b"k" * 32))
    p2 = Pseudonymizer(Secret(b"j" * 32))
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    assert p1.uid(uid) == p1b.uid(uid) != p2.uid(uid)
    assert re.fullmatch(r"2\.25\.\d+", p1.uid(uid)) and len(p1.uid(uid)) <= 64
    assert p1.patient("ns", "MRN1") == p1b.patient("ns", "MRN1") != p2.patient("ns", "MRN1")
    assert p1.patient("ns", "MRN1") != p1.patient("other", "MRN1")
    offsets = {p1.date_offset_days(f"patient{i}") for i in range(500)}
    assert all(-3652 <= o <= -1 for o in offsets) and len(offsets) > 400
    assert 0.0 <= p1.unit_interval("split", "x") < 1.0


def test_key_is_required_and_never_printed(tmp_path):
    with pytest.raises(KeyProblem, match="--key-file"):
        load_key(None, env={})
    short = tmp_path / "short.key"
    short.write_text("abc")
    with pytest.raises(KeyProblem, match="at least"):
        load_key(str(short), env={})
    good = tmp_path / "good.key"
    good.write_text("s3cret-key-material-0123456789\n")
    secret = load_key(str(good), env={})
    assert secret.reveal() == b"s3cret-key-material-0123456789"
    assert "s3cret" not in repr(secret) and "s3cret" not in str(secret)
    assert "s3cret" not in repr(Pseudonymizer(secret))
    assert load_key(None, env={"MEDCURATE_KEY": "env-key-material-0123456789"}).reveal().startswith(b"env-key")
