use super::*;
use crate::spec::ModelSpec;
use crate::stats::FeatureSums;

pub(crate) const PLANT: &str = r#"
format = 1
name = "plant"
[task]
kind = "multiclass"
classes = ["ok", "rework", "scrap"]
target = "grade"
features = ["temp", "line", "pressure"]
missing = "mean"
[task.columns.line]
categories = ["L1", "L2"]
missing = "other"
[task.columns.pressure]
missing = "constant"
fill = 1.5
indicator = true
[model]
hidden = [4]
[training]
learning_rate = 0.01
local_epochs = 1
batch_size = 8
seed = 1
"#;

fn plant() -> ModelSpec {
    ModelSpec::parse(PLANT, "<plant>").unwrap()
}

#[test]
fn inputs_are_named_and_counted_from_the_declared_columns() {
    let s = plant();
    assert_eq!(
        s.input_names(),
        [
            "temp",
            "line=L1",
            "line=L2",
            "line=(other)",
            "pressure",
            "pressure (missing)"
        ]
    );
    assert_eq!(s.input_width(), 6);
    assert_eq!(s.input_of("temp"), Some(0));
    assert_eq!(s.input_of("line"), None);
    assert_eq!(s.input_of("pressure"), Some(4));
    assert_eq!(s.class_name(2), "scrap");
    // the network and its blob follow the encoded width
    assert_eq!(s.layer_widths(), vec![6, 4, 3]);
}

#[test]
fn cells_are_encoded_blanks_filled_as_declared_and_counted() {
    let s = plant();
    let mut e = s.encoder(false);
    let mut out = Vec::new();
    assert_eq!(e.encode(&["20.5", "L2", "3"], &mut out), Ok(Row::Kept));
    assert_eq!(out, [20.5, 0.0, 1.0, 0.0, 3.0, 0.0]);
    out.clear();
    // blank temp → NaN (the federated mean, 0 after normalisation); unknown line → other;
    // blank pressure → the constant, indicator 1
    assert_eq!(e.encode(&["", "L9", "NA"], &mut out), Ok(Row::Kept));
    assert!(out[0].is_nan());
    assert_eq!(&out[1..], [0.0, 0.0, 1.0, 1.5, 1.0]);
    out.clear();
    // blank line → other (its policy), counted as filled, not as unseen
    assert_eq!(e.encode(&["1", "", "2"], &mut out), Ok(Row::Kept));
    assert_eq!(&out[1..4], [0.0, 0.0, 1.0]);
    let c = e.counts();
    assert_eq!(c.filled, [1, 1, 1]);
    assert_eq!(c.unseen, [0, 1, 0]);
    out.clear();
    assert_eq!(
        e.encode(&["hot", "L1", "2"], &mut out),
        Err((0, CellFault::NotNumeric("hot".into())))
    );
    assert!(out.is_empty(), "a refused row leaves nothing behind");
}

#[test]
fn a_declared_category_that_looks_missing_is_a_category() {
    let text = PLANT.replace(
        r#"categories = ["L1", "L2"]"#,
        r#"categories = ["L1", "NA"]"#,
    );
    let s = ModelSpec::parse(&text, "<t>").unwrap();
    let mut out = Vec::new();
    s.encoder(false)
        .encode(&["1", "NA", "2"], &mut out)
        .unwrap();
    assert_eq!(&out[1..4], [0.0, 1.0, 0.0]);
}

#[test]
fn drop_row_leaves_a_training_row_out_but_predicts_every_row() {
    let text = PLANT.replace("missing = \"mean\"\n", "missing = \"drop-row\"\n");
    let s = ModelSpec::parse(&text, "<t>").unwrap();
    let mut out = Vec::new();
    let mut train = s.encoder(false);
    assert_eq!(
        train.encode(&["", "L1", "2"], &mut out),
        Ok(Row::Dropped(0))
    );
    assert!(out.is_empty());
    assert_eq!(train.counts().dropped, [1, 0, 0]);
    let mut predict = s.encoder(true);
    assert_eq!(predict.encode(&["", "L1", "2"], &mut out), Ok(Row::Kept));
    assert!(out[0].is_nan());
}

#[test]
fn a_blank_without_a_policy_is_refused() {
    let text = PLANT.replace("missing = \"mean\"\n", "");
    let s = ModelSpec::parse(&text, "<t>").unwrap();
    let mut out = Vec::new();
    assert_eq!(
        s.encoder(false)
            .encode(&[" ", "L1", "2"].map(str::trim), &mut out),
        Err((0, CellFault::Blank))
    );
}

#[test]
fn mean_fill_is_the_federated_mean_of_present_values_and_equals_pooled_statistics() {
    // Three plants' encoded rows with blanks; their merged sums equal the sums of all rows.
    let s = plant();
    let rows: [&[[&str; 3]]; 3] = [
        &[["1", "L1", "1"], ["", "L2", ""], ["3", "L1", "2"]],
        &[["", "", "4"], ["5", "L1", "NA"]],
        &[["7", "L3", "1"], ["", "L2", "3"], ["9", "L1", "?"]],
    ];
    let encode = |part: &[[&str; 3]]| {
        let mut e = s.encoder(false);
        let mut out = Vec::new();
        for r in part {
            e.encode(r, &mut out).unwrap();
        }
        out
    };
    let mut merged = FeatureSums::zeros(s.input_width());
    let mut pooled_rows = Vec::new();
    for part in rows {
        let enc = encode(part);
        merged
            .merge(&FeatureSums::of_rows(&enc, s.input_width()))
            .unwrap();
        pooled_rows.extend(enc);
    }
    let pooled = FeatureSums::of_rows(&pooled_rows, s.input_width());
    assert_eq!(merged, pooled);
    merged.validate(s.input_width()).unwrap();
    assert_eq!(merged.count, 8);
    assert_eq!(merged.present(0), 5);
    let norm = merged.normalization().unwrap();
    // temp: mean of 1, 3, 5, 7, 9 — the blanks do not pull it to 0
    assert!((norm.mean[0] - 5.0).abs() < 1e-6);
    assert!((norm.std[0] - 8f32.sqrt()).abs() < 1e-5);
    // a blank is the mean: 0 after normalisation
    let z = norm.apply(&pooled_rows[6..12]);
    assert_eq!(z[0], 0.0);
}

#[test]
fn column_declarations_are_checked_and_name_the_field() {
    let bad = [
        (
            "[task.columns.line]",
            "[task.columns.lane]",
            "not one of the task's features",
        ),
        (
            r#"categories = ["L1", "L2"]"#,
            r#"categories = ["L1", "L1"]"#,
            "listed twice",
        ),
        (
            r#"categories = ["L1", "L2"]"#,
            "categories = []",
            "expected 1 to",
        ),
        (
            r#"categories = ["L1", "L2"]"#,
            r#"categories = [" L1"]"#,
            "surrounding spaces",
        ),
        ("fill = 1.5\n", "", "needs `fill`"),
        (
            "missing = \"other\"\n",
            "missing = \"constant\"\n",
            "not a constant",
        ),
        (
            "missing = \"mean\"\n",
            "missing = \"constant\"\n",
            "needs a fill per column",
        ),
        (
            "missing = \"mean\"\n",
            "missing = \"sometimes\"\n",
            "unknown variant",
        ),
        (
            r#"classes = ["ok", "rework", "scrap"]"#,
            r#"classes = ["ok", "ok", "scrap"]"#,
            "named twice",
        ),
        (
            "[task.columns.pressure]\n",
            "[task.columns.pressure]\ncolour = 1\n",
            "unknown field",
        ),
    ];
    for (old, new, want) in bad {
        assert!(PLANT.contains(old), "{old}");
        let e = ModelSpec::parse(&PLANT.replacen(old, new, 1), "<t>").unwrap_err();
        assert!(e.to_string().contains(want), "{new}: {e}");
    }
    let numeric_other = PLANT.replace(
        "[task.columns.pressure]\nmissing = \"constant\"",
        "[task.columns.pressure]\nmissing = \"other\"",
    );
    let e = ModelSpec::parse(&numeric_other, "<t>").unwrap_err();
    assert!(e.to_string().contains("for categorical columns"), "{e}");
}

#[test]
fn spelled_out_defaults_keep_the_spec_id_and_the_toml_round_trips() {
    let s = plant();
    let again = ModelSpec::parse(&s.to_toml(), "<again>").unwrap();
    assert_eq!(again, s);
    assert_eq!(again.id(), s.id());
    // task.missing = "mean" is the same as saying it on each column that has no policy
    let spelled = PLANT.replace(
        "missing = \"mean\"\n[task.columns.line]",
        "[task.columns.temp]\nmissing = \"mean\"\n[task.columns.line]",
    );
    assert_eq!(ModelSpec::parse(&spelled, "<s>").unwrap().id(), s.id());
    // a column declared plain is no column at all
    let plain = crate::spec::tests::SMALL.replace(
        "[model]",
        "[task.columns.a]\nmissing = \"error\"\nindicator = false\n[model]",
    );
    let small = ModelSpec::parse(crate::spec::tests::SMALL, "<small>").unwrap();
    assert_eq!(ModelSpec::parse(&plain, "<p>").unwrap().id(), small.id());
    assert!(small.task.columns.is_empty() && small.task.class_names.is_none());
}

#[test]
fn binary_tasks_may_name_their_two_classes() {
    let text = crate::spec::tests::SMALL.replace(
        "kind = \"binary\"",
        "kind = \"binary\"\nclasses = [\"pass\", \"fail\"]",
    );
    let s = ModelSpec::parse(&text, "<t>").unwrap();
    assert_eq!(s.class_name(1), "fail");
    let three = text.replace(r#"["pass", "fail"]"#, r#"["a", "b", "c"]"#);
    let e = ModelSpec::parse(&three, "<t>").unwrap_err();
    assert!(e.to_string().contains("names 2 classes"), "{e}");
}

#[test]
fn a_fault_anywhere_refuses_the_row_and_only_kept_rows_are_counted() {
    let text = PLANT.replace("missing = \"mean\"\n", "missing = \"drop-row\"\n");
    let s = ModelSpec::parse(&text, "<t>").unwrap();
    let mut e = s.encoder(false);
    let mut out = Vec::new();
    // temp drops the row, but pressure is not a number: refused whatever the order
    assert_eq!(
        e.encode(&["", "L1", "high"], &mut out),
        Err((2, CellFault::NotNumeric("high".into())))
    );
    // a dropped row's unseen category and filled blank are not counted
    assert_eq!(e.encode(&["", "L7", ""], &mut out), Ok(Row::Dropped(0)));
    assert!(out.is_empty());
    assert_eq!(e.counts().unseen, [0, 0, 0]);
    assert_eq!(e.counts().filled, [0, 0, 0]);
    assert_eq!(e.counts().dropped, [1, 0, 0]);
}

#[test]
fn only_inputs_filled_with_the_mean_may_be_missing_in_the_sums() {
    // temp (mean) | line L1, L2, other (other) | pressure (constant), its indicator
    assert_eq!(
        plant().may_be_missing(),
        [true, false, false, false, false, false]
    );
    let e = ModelSpec::parse(&PLANT.replace(r#""ok", "rework""#, r#""ok", "NA""#), "<t>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("reads as a blank target"), "{e}");
}
