"""Runs of one sweep scored on different text: found, named and measured against each other in the report."""

import numpy as np

from analysis import claims, report, tables
from analysis.data import frame_from_records
from analysis.fits import fit_all, fit_text_versions
from analysis.simulate import make_run_record, quadratic_law

RHOS = (0.2, 0.5, 0.8, 1.0)


def text_versions(df):
    return tables.text_versions_table(fit_text_versions(df)[0])


def without_text_offsets(df):
    return fit_text_versions(df)[1]
OLD = {"tokenizer_fingerprint": "aaaa1111", "validation_tokens_available": 304506}
NEW = {"tokenizer_fingerprint": "bbbb2222", "validation_tokens_available": 287835}


def runs(texts_by_seed: dict, shift: dict, seeds=4, noise=0.005):
    """Allocation runs of one sweep: seed s scored on ``texts_by_seed[s]``, its val loss moved by ``shift``."""
    rng = np.random.default_rng(1)
    law = quadratic_law(1.8, 0.7, 0.3)
    out = []
    for rho in RHOS:
        for s in range(seeds):
            text = texts_by_seed[s]
            loss = float(law(rho)) + float(rng.normal(0, noise))
            out.append(make_run_record(sweep="ladder", experiment="allocation", seed=s,
                                       axes={"rho": rho, "budget": "2e20", "seed": s},
                                       val_loss=loss + shift.get(text["tokenizer_fingerprint"], 0.0),
                                       metrics={"heldout_loss": loss + 0.5, "data": dict(text)}))
    return out


def test_a_changed_validation_set_is_found_and_its_offset_measured(tmp_path):
    records = runs({0: OLD, 1: OLD, 2: NEW, 3: NEW}, shift={"bbbb2222": 0.02}, seeds=4)
    df = frame_from_records(records)
    versions = text_versions(df)
    assert list(versions["runs"]) == [8, 8] and list(versions["points"]) == [4, 4]
    new = versions.iloc[1]
    assert new["text"] == "tokenizer bbbb2222, validation tokens 287835"
    assert new["points shared with the reference"] == 4
    val, se = (float(v) for v in new["val_loss offset"].split(" ± "))
    assert abs(val - 0.02) < 3 * se and se < 0.01  # the shift put in, from the shared points
    held, se = (float(v) for v in new["heldout_loss offset"].split(" ± "))
    assert abs(held) < 3 * se  # the held-out text did not move: the validation set did
    one_text = without_text_offsets(df)
    moved = df["metrics.data.tokenizer_fingerprint"] == "bbbb2222"
    assert np.allclose(df.loc[moved, "metrics.val_loss"] - one_text.loc[moved, "metrics.val_loss"], val, atol=1e-4)
    assert one_text.loc[~moved, "metrics.val_loss"].equals(df.loc[~moved, "metrics.val_loss"])
    text = report.build_report(df, (fits := fit_all(df, n_boot=50)), {}, claims.evaluate(fits, df),
                               tmp_path / "report.md")
    summary = text.split("## Data")[0]
    assert "ladder was scored on 2 versions of its text" in summary and "- u_curve_one_text: " in summary
    assert new["val_loss offset"] in text.split("## Data")[1].split("## Fitted laws")[0]
    assert "u_curve_one_text" in set(tables.fit_table(fits)["fit"])


def test_one_text_recorded_with_more_fields_later_is_one_version():
    newer = {**OLD, "validation_fingerprint": "cccc3333", "text_fingerprint": "dddd4444"}
    df = frame_from_records(runs({0: OLD, 1: OLD, 2: newer, 3: newer}, shift={}))
    assert text_versions(df).empty and without_text_offsets(df) is None
    assert fit_all(df, n_boot=20)["u_curve_one_text"] is None
    both = frame_from_records(runs({0: newer, 1: newer, 2: newer, 3: {**newer, "validation_fingerprint": "e"}},
                                   shift={}))
    assert list(text_versions(both)["text"].str.contains("validation cccc3333")) == [True, False]


def test_versions_without_a_shared_point_have_no_offset():
    records = [r for r in runs({0: OLD, 1: NEW, 2: OLD, 3: NEW}, shift={})
               if (r["axes"]["rho"] < 0.6) == (r["metrics"]["data"]["tokenizer_fingerprint"] == "aaaa1111")]
    versions = text_versions(frame_from_records(records))
    assert versions.iloc[1]["points shared with the reference"] == 0
    assert versions.iloc[1]["val_loss offset"] == "no shared point"
    assert without_text_offsets(frame_from_records(records)) is None  # no scale to move them onto
